using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// How programs hang on pods' devices: pinned tcx links on this kernel (6.18). Enforcement outlives the agent (kill -9:
/// a denied ping stays denied), a restarted agent keeps the same links and swaps their programs, switching to clsact
/// and back hands each device over with no moment unfiltered, and a deleted pod's links go with it.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed partial class AttachmentTests
{
    private static readonly string Links = Path.Combine(SandboxFixture.PinDirectory, "links");
    private readonly SandboxFixture _s;

    public AttachmentTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    /// <summary>Link id and program id of a pinned link, as bpftool shows it ("92: type 11  prog 16771").</summary>
    private static (int Link, int Program) Link(string pin)
    {
        var shown = Ip.Exec("bpftool", ["link", "show", "pinned", pin], null);
        var match = LinkLine().Match(shown);
        Assert.True(match.Success, $"bpftool link show pinned {pin}: {shown}");
        return (int.Parse(match.Groups[1].Value, System.Globalization.CultureInfo.InvariantCulture),
            int.Parse(match.Groups[2].Value, System.Globalization.CultureInfo.InvariantCulture));
    }

    [GeneratedRegex(@"^(\d+):.*\bprog (\d+)", RegexOptions.Multiline)]
    private static partial Regex LinkLine();

    private static string Pin(EndpointOutput endpoint, string direction) => Path.Combine(Links, $"if{endpoint.Id}-{direction}");

    private string NodeFilters(EndpointOutput endpoint, string direction)
    {
        var status = JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out, AgentJsonContext.Default.StatusResponse)!;
        return Ip.Exec("ip", ["netns", "exec", status.NodeNamespace, "tc", "filter", "show", "dev", endpoint.Interface, direction], null);
    }

    /// <summary>Only TCP 80 from the client into the server: ping is what policy drops.</summary>
    private (EndpointOutput Client, EndpointOutput Server, IPAddress Target) ServerTakesTcp80Only()
    {
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-l4", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """), "import").Code);
        var server = _s.Endpoint("e2e-a/server");
        return (_s.Endpoint("e2e-a/client"), server, IPAddress.Parse(server.IPv4!));
    }

    [Fact]
    public void PinnedTcxLinksKeepEnforcingWithoutTheAgentAndAreAdoptedOnRestart()
    {
        var (client, server, target) = ServerTakesTcp80Only();
        Assert.Contains("tcx links pinned in", _s.CliOk("status").Out, StringComparison.Ordinal);
        var before = Link(Pin(server, "egress"));
        Assert.Equal("", NodeFilters(server, "egress").Trim()); // no clsact filter beside the link

        _s.KillAgent();
        try
        {
            // No agent: the pinned links still run the programs. The hostile ping stays dropped, TCP 80 still connects.
            Assert.False(PodTraffic.Echo(client.Netns, target, 0x6101), "a denied ping passed while the agent was down");
            using var connection = PodTraffic.Connect(client.Netns, target, 80);
            Assert.True(PodTraffic.RoundTrip(connection, "agent down"u8));
        }
        finally
        {
            _s.StartAgent();
        }
        var after = Link(Pin(server, "egress"));
        Assert.Equal(before.Link, after.Link); // the same link, adopted
        Assert.NotEqual(before.Program, after.Program); // with the restarted agent's program in it
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x6102));
    }

    [Fact]
    public void SwitchingToClsactAndBackHandsEachDeviceOver()
    {
        var (client, server, target) = ServerTakesTcp80Only();
        _s.KillAgent();
        try
        {
            _s.StartAgent("--attach", "clsact");
            Assert.Contains("clsact", _s.CliOk("status").Out, StringComparison.Ordinal);
            Assert.Contains("to_pod", NodeFilters(server, "egress"), StringComparison.Ordinal);
            Assert.False(File.Exists(Pin(server, "egress")), "the tcx link stayed beside the clsact filter");
            Assert.False(PodTraffic.Echo(client.Netns, target, 0x6201));
        }
        finally
        {
            _s.KillAgent();
            _s.StartAgent();
        }
        Assert.True(File.Exists(Pin(server, "egress")));
        Assert.DoesNotContain("to_pod", NodeFilters(server, "egress"), StringComparison.Ordinal);
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x6202));

        // A pod's links go with it.
        var pins = Directory.GetFiles(Links).Length;
        Assert.Equal(0, _s.Apply("apiVersion: v1\nkind: Pod\nmetadata: {name: other, namespace: e2e-b}\n", "delete").Code);
        Assert.Equal(pins - 2, Directory.GetFiles(Links).Length);
    }

    [Fact]
    public void DeviceHooksOnAVethOfTheirOwn()
    {
        const string ns = "mbe2e-hooks";
        var links = $"/sys/fs/bpf/{ns}-links";
        Ip.Exec("ip", ["netns", "add", ns], null);
        using var datapath = Datapath.PolicyDatapath.Load();
        try
        {
            Ip.Exec("ip", ["-n", ns, "link", "add", "hk0", "type", "veth", "peer", "name", "hk1"], null);
            NetworkNamespace.Run(ns, () =>
            {
                var ifIndex = (int)System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces().Single(i => i.Name == "hk0")
                    .GetIPProperties().GetIPv4Properties().Index;
                // clsact with no link directory at all: attaching and detaching never trips over missing pins.
                var clsact = new Datapath.Ebpf.DeviceHooks(Datapath.Ebpf.AttachMode.Clsact, links);
                clsact.Attach(ifIndex, Datapath.Ebpf.TcDirection.Ingress, datapath.FromPod);
                Assert.Equal(datapath.FromPod.Id, clsact.Query(ifIndex, Datapath.Ebpf.TcDirection.Ingress));
                clsact.Detach(ifIndex, Datapath.Ebpf.TcDirection.Ingress);
                Assert.Null(clsact.Query(ifIndex, Datapath.Ebpf.TcDirection.Ingress));
                Assert.False(Directory.Exists(links));

                var tcx = new Datapath.Ebpf.DeviceHooks(Datapath.Ebpf.AttachMode.Tcx, links);
                tcx.Attach(ifIndex, Datapath.Ebpf.TcDirection.Ingress, datapath.FromPod);
                Assert.Equal(datapath.FromPod.Id, tcx.Query(ifIndex, Datapath.Ebpf.TcDirection.Ingress));
                tcx.Attach(ifIndex, Datapath.Ebpf.TcDirection.Ingress, datapath.ToPod); // swapped in place
                Assert.Equal(datapath.ToPod.Id, tcx.Query(ifIndex, Datapath.Ebpf.TcDirection.Ingress));
                Assert.Single(Directory.GetFiles(links));
                Assert.Equal(0, tcx.PruneDefunctLinks()); // the device is there
                Ip.Exec("ip", ["-n", ns, "link", "del", "hk0"], null);
                Assert.Null(tcx.Query(ifIndex, Datapath.Ebpf.TcDirection.Ingress));
                Assert.Equal(1, tcx.PruneDefunctLinks());
                Assert.Empty(Directory.GetFiles(links));
            });
        }
        finally
        {
            Ip.Exec("ip", ["netns", "del", ns], null);
            if (Directory.Exists(links))
            {
                Directory.Delete(links, recursive: true);
            }
        }
    }
}
