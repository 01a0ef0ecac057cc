using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// <c>policy import --dry-run</c> and <c>policy delete --dry-run</c> on real traffic: a live TCP connection and a live
/// echo exchange are reported as "would be cut" by a policy that denies them, with the rule that causes it; the exit
/// status says so; nothing is installed and both keep working.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class DryRunTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server";

    public DryRunTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    [Fact]
    public void LiveConnectionsThatAChangeWouldCutAreReportedAndNothingChanges()
    {
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-tcp", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """), "import").Code);
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-echo", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 8}]}]}]
            """), "import").Code);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        var target = IPAddress.Parse(server.IPv4!);

        // Live traffic: a TCP connection held open and an echo exchange, both in conntrack now.
        using var connection = NetworkNamespace.Run(client.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream,
            ProtocolType.Tcp));
        connection.Connect(target, 80);
        Assert.True(PodTraffic.Echo(client.Netns, target, 0x4d01));

        var deny = SandboxFixture.WriteYaml(SandboxFixture.Cnp("server-deny", """
            endpointSelector: {matchLabels: {app: server}}
            ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]
            """));
        try
        {
            var dry = _s.Cli("policy", "import", "--dry-run", deny, "-o", "json");
            Assert.True(dry.Code == 1, $"a dry run that cuts connections must exit 1: {dry.Out}{dry.Err}");
            var report = JsonSerializer.Deserialize(dry.Out, AgentJsonContext.Default.DryRunResponse)!;
            Assert.Contains(report.WouldBeCut, c => c.Pod == Server && c.Protocol == "tcp" && c.Port == 80 && c.Source == client.IPv4
                && c.Cause.Contains("server-deny", StringComparison.Ordinal));
            Assert.Contains(report.WouldBeCut, c => c.Pod == Server && c.Protocol == "icmp" && c.IcmpType == 8
                && c.Cause.Contains("server-deny", StringComparison.Ordinal));
            Assert.Contains(report.Endpoints, e => e.Pod == Server);
            Assert.DoesNotContain(report.Endpoints, e => e.Pod == Client);
            var text = _s.Cli("policy", "import", "--dry-run", deny);
            Assert.Contains("WOULD BE CUT", text.Out, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(deny);
        }

        // Deleting the echo rule would cut the echo exchange only.
        var delete = _s.Cli("policy", "delete", "e2e-a/server-echo", "--dry-run", "-o", "json");
        Assert.Equal(1, delete.Code);
        var deleted = JsonSerializer.Deserialize(delete.Out, AgentJsonContext.Default.DryRunResponse)!;
        Assert.All(deleted.WouldBeCut, c => Assert.Equal("icmp", c.Protocol));
        Assert.NotEmpty(deleted.WouldBeCut);
        var unrelated = SandboxFixture.WriteYaml(SandboxFixture.Cnp("unrelated", """
            endpointSelector: {matchLabels: {app: nobody}}
            ingress: [{}]
            """));
        var notPolicies = SandboxFixture.WriteYaml("apiVersion: v1\nkind: Namespace\nmetadata: {name: x}\n");
        try
        {
            Assert.Equal(0, _s.Cli("policy", "import", "--dry-run", unrelated).Code); // cuts nothing: exit 0
            Assert.NotEqual(0, _s.Cli("policy", "import", "--dry-run", notPolicies).Code);
        }
        finally
        {
            File.Delete(unrelated);
            File.Delete(notPolicies);
        }

        // Nothing was installed: no new policy, the connection still carries data, echo still answered.
        var policies = _s.CliOk("policy", "get").Out;
        Assert.DoesNotContain("server-deny", policies, StringComparison.Ordinal);
        Assert.Contains("server-echo", policies, StringComparison.Ordinal);
        connection.Send("still here"u8);
        Assert.True(PodTraffic.Echo(client.Netns, target, 0x4d02), "echo stopped after a dry run");
    }

    [Fact]
    public void RecentFlowsOfTheFlowRingThatAChangeWouldFlipAreReported()
    {
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-tcp", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """), "import").Code);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        var target = IPAddress.Parse(server.IPv4!);
        // Two pings dropped, one TCP connection admitted: all three in the flow ring, no connection left for echo.
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x4e01));
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x4e02));
        using (var connection = PodTraffic.Connect(client.Netns, target, 80))
        {
            Assert.True(PodTraffic.RoundTrip(connection, "flow"u8));
        }

        var echo = SandboxFixture.WriteYaml(SandboxFixture.Cnp("server-echo", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 8}]}]}]
            """));
        var deny = SandboxFixture.WriteYaml(SandboxFixture.Cnp("server-deny-tcp", """
            endpointSelector: {matchLabels: {app: server}}
            ingressDeny: [{toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """));
        try
        {
            var allow = _s.Cli("policy", "import", "--dry-run", echo, "-o", "json");
            Assert.True(allow.Code == 0, $"allowing more cuts nothing: {allow.Out}{allow.Err}");
            var report = JsonSerializer.Deserialize(allow.Out, AgentJsonContext.Default.DryRunResponse)!;
            var pings = Assert.Single(report.FlowsWouldBeAllowed!, f => f.Protocol == "icmp" && f.Source == client.IPv4);
            Assert.Equal((8, 0, "denied", "allowed", Server), (pings.IcmpType!.Value, pings.IcmpCode!.Value, pings.Before, pings.After,
                pings.Pod));
            Assert.True(pings.Seen >= 2, $"two dropped pings, reported {pings.Seen}");
            Assert.Contains("server-echo", pings.Cause, StringComparison.Ordinal);
            Assert.Empty(report.FlowsWouldBeCut!);
            Assert.True(report.FlowsChecked >= 3);

            var narrow = _s.Cli("policy", "import", "--dry-run", deny, "-o", "json");
            Assert.Equal(1, narrow.Code);
            var cut = JsonSerializer.Deserialize(narrow.Out, AgentJsonContext.Default.DryRunResponse)!;
            Assert.Contains(cut.FlowsWouldBeCut!, f => f.Protocol == "tcp" && f.Port == 80 && f.Before == "allowed"
                && f.Cause.Contains("server-deny-tcp", StringComparison.Ordinal));
            Assert.Contains("RECENT FLOWS THAT WOULD BE DENIED", _s.Cli("policy", "import", "--dry-run", deny).Out,
                StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(echo);
            File.Delete(deny);
        }
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x4e03), "a dry run installed the echo rule");
    }
}
