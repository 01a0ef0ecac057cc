using System.Diagnostics;
using System.Text.Json;
using static Membrane.Agent.Tests.Containers.CniAgentFixture;

namespace Membrane.Agent.Tests.Containers;

/// <summary>
/// The CNI plugin and the agent's CNI side as a malicious or broken runtime would drive them (issue 24): the host's
/// namespace or a file that is no namespace as CNI_NETNS, a second ADD of one container for another pod, a GC
/// without the runtime's list or from another network, a huge configuration, link-local chained addresses, and a delete queue holding a
/// FIFO and a link to /dev/zero. Each is refused with a CNI error naming the problem and changes nothing.
/// </summary>
[Collection(CniAgentGroup.Name)]
public sealed class CniHostileTests(CniAgentFixture fixture) : IDisposable
{
    private const string Netns = "mbcni-hostile";
    private static string NetnsPath => $"/run/netns/{Netns}";

    private static string Config(string extra = "", string network = "hostile") =>
        $$"""{"cniVersion":"1.1.0","name":"{{network}}","type":"membrane-cni","agentSocket":"{{Socket}}"{{extra}}}""";

    private static (int Code, JsonElement Output) Plugin(string command, string config, string containerId = "hostile1",
        string? netns = null, string pod = "hostile", string ifName = "eth0")
    {
        var start = new ProcessStartInfo(Path.Combine(BinDirectory, "membrane-cni"))
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.Environment["CNI_COMMAND"] = command;
        start.Environment["CNI_CONTAINERID"] = containerId;
        start.Environment["CNI_NETNS"] = netns ?? NetnsPath;
        start.Environment["CNI_IFNAME"] = ifName;
        start.Environment["CNI_ARGS"] = $"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}";
        start.Environment["CNI_PATH"] = BinDirectory;
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        try
        {
            process.StandardInput.Write(config);
            process.StandardInput.Close();
        }
        catch (IOException)
        {
            // the plugin stopped reading (a configuration over its limit): its answer says why
        }
        process.WaitForExit();
        var text = stdout.Result;
        using var document = JsonDocument.Parse(text.Length == 0 ? "null" : text);
        return (process.ExitCode, document.RootElement.Clone());
    }

    private static void Refused((int Code, JsonElement Output) result, string expected)
    {
        Assert.True(result.Code == 1, $"accepted: {result.Output}");
        Assert.Contains(expected, result.Output.GetProperty("msg").GetString() ?? "", StringComparison.Ordinal);
    }

    private static int Endpoints(string pod) => AllEndpoints().Count(e => e.Pod == pod);

    [Fact]
    public void HostileRequestsAreRefusedAndChangeNothing()
    {
        Run("ip", "netns", "add", Netns);
        var before = OwnInterfaces().Count;
        // The node's own namespace (this test runs in it, as the agent does), named by a process that lives in it.
        Refused(Plugin("ADD", Config(), netns: $"/proc/{Environment.ProcessId}/ns/net"), "the agent's own network namespace");
        Refused(Plugin("ADD", Config(), netns: "/proc/1/ns/net"), "CNI_NETNS /proc/1/ns/net");
        File.WriteAllText("/run/netns/mbcni-notanetns", "");
        Refused(Plugin("ADD", Config(), netns: "/run/netns/mbcni-notanetns"), "is not a network namespace");
        Assert.Equal(before, OwnInterfaces().Count);
        Assert.Equal(0, Endpoints("default/hostile"));

        var added = Plugin("ADD", Config());
        Assert.True(added.Code == 0, added.Output.ToString());
        // The same container and interface again, for another pod: refused; the first stays as it was.
        Refused(Plugin("ADD", Config(), pod: "impostor"), "another namespace, pod or network");
        Assert.Equal(1, Endpoints("default/hostile"));
        Assert.Equal(0, Endpoints("default/impostor"));
        // A GC without the runtime's list removes nothing.
        Refused(Plugin("GC", Config()), "cni.dev/valid-attachments");
        Assert.Equal(1, Endpoints("default/hostile"));
        // Another network's runtime: its GC (listing none of its own) and its ADD of the same container leave it alone.
        const string NoneValid = ",\"cni.dev/valid-attachments\":[]";
        Assert.Equal(0, Plugin("GC", Config(NoneValid, network: "other")).Code);
        Assert.Equal(1, Endpoints("default/hostile"));
        Refused(Plugin("ADD", Config(network: "other")), "another namespace, pod or network");
        Assert.Equal(1, Endpoints("default/hostile"));
        // A configuration of 2 MiB is refused before it is read whole.
        var huge = Config(extra: $",\"padding\":\"{new string('x', 2 << 20)}\"");
        var (code, error) = Plugin("ADD", huge, containerId: "hostile2", pod: "huge");
        Assert.Equal((1, 6), (code, error.GetProperty("code").GetInt32()));
        Assert.Equal(0, Endpoints("default/huge"));
        // Its own network's GC that no longer lists it removes it.
        Assert.Equal(0, Plugin("GC", Config(NoneValid)).Code);
        Assert.Equal(0, Endpoints("default/hostile"));
        Assert.Equal(0, Plugin("DEL", Config()).Code);
    }

    [Fact]
    public void ChainedAddressesThatNoPodMayHaveAreRefused()
    {
        Run("ip", "netns", "add", Netns);
        foreach (var address in new[] { "169.254.1.1/32", "10.201.0.9/16", "127.0.0.2/8" })
        {
            var previous = $$"""{"cniVersion":"1.0.0","interfaces":[{"name":"mbcnihost0"},{"name":"eth0","sandbox":"{{NetnsPath}}"}],""" +
                $"\"ips\":[{{\"address\":\"{address}\",\"interface\":1}}]}}";
            var result = Plugin("ADD", Config(extra: $",\"prevResult\":{previous}"));
            Assert.True(result.Code == 1, $"{address} accepted: {result.Output}");
            Assert.Equal(0, Endpoints("default/hostile"));
        }
    }

    private static string Chained(string hostEnd, string ifName, string address) => Config(extra: ",\"prevResult\":" +
        $$"""{"cniVersion":"1.0.0","interfaces":[{"name":"{{hostEnd}}"},{"name":"{{ifName}}","sandbox":"{{NetnsPath}}"}],""" +
        $"\"ips\":[{{\"address\":\"{address}\",\"interface\":1}}]}}");

    /// <summary>
    /// Chained mode, as a runtime that lies would drive it: the container's veth peer sits in another container's
    /// namespace under the index of a real host interface (programs would land on that host interface), and a second
    /// pod chained onto an interface that is already an endpoint's (two endpoints, one interface). Both refused.
    /// </summary>
    [Fact]
    public void ChainingOntoAnotherNamespacesVethOrATakenInterfaceIsRefused()
    {
        const string other = "mbcni-hostile-b";
        Run("ip", "netns", "add", Netns);
        Run("ip", "netns", "add", other);
        try
        {
            // A host interface's index (a veth of this test's, so a regression attaches nothing to a real one), given to the
            // lying veth's peer in the other namespace.
            Run("ip", "link", "add", "mbcnidum0", "type", "veth", "peer", "name", "mbcnidum1");
            using var links = JsonDocument.Parse(Run("ip", "-j", "link", "show", "dev", "mbcnidum0"));
            var hostIndex = links.RootElement[0].GetProperty("ifindex").GetInt32();
            Run("ip", "-n", other, "link", "add", "vb", "index", $"{hostIndex}", "type", "veth", "peer", "name", "eth0", "netns", Netns);
            var lying = Plugin("ADD", Chained("vb", "eth0", "10.88.0.5/16"), containerId: "liar", pod: "liar");
            Refused(lying, "not a veth whose peer is in the host's network namespace");
            Assert.Equal(0, Endpoints("default/liar"));

            Run("ip", "link", "add", "mbcnih0", "type", "veth", "peer", "name", "eth1", "netns", Netns);
            Run("ip", "link", "set", "mbcnih0", "up");
            var first = Plugin("ADD", Chained("mbcnih0", "eth1", "10.88.0.6/16"), containerId: "chain1", pod: "chain1", ifName: "eth1");
            Assert.True(first.Code == 0, first.Output.ToString());
            var second = Plugin("ADD", Chained("mbcnih0", "eth1", "10.88.0.7/16"), containerId: "chain2", pod: "chain2", ifName: "eth1");
            Refused(second, "is already the host end of pod default/chain1");
            Assert.Equal(1, Endpoints("default/chain1"));
            Assert.Equal(0, Endpoints("default/chain2"));
            Assert.Equal(0, Plugin("DEL", Chained("mbcnih0", "eth1", "10.88.0.6/16"), containerId: "chain1", pod: "chain1",
                ifName: "eth1").Code);
        }
        finally
        {
            Exec("ip", ["link", "delete", "mbcnih0"], []);
            Exec("ip", ["link", "delete", "mbcnidum0"], []);
            Exec("ip", ["netns", "delete", other], []);
        }
    }

    [Fact]
    public void AQueueOfFifosAndLinksNeitherHangsNorFloodsTheAgent()
    {
        var queue = Path.Combine(StateDirectory, "cni-delete-queue");
        fixture.KillAgent();
        try
        {
            Directory.CreateDirectory(queue);
            Run("mkfifo", Path.Combine(queue, "fifo.json"));
            File.CreateSymbolicLink(Path.Combine(queue, "zero.json"), "/dev/zero");
        }
        finally
        {
            fixture.StartAgent(); // waits (with a deadline) until the agent answers: a hang fails here
        }
        Assert.Equal(Api.PathKind.Missing, Api.SafeFiles.Inspect(Path.Combine(queue, "fifo.json")).Kind);
        Assert.Equal(Api.PathKind.Missing, Api.SafeFiles.Inspect(Path.Combine(queue, "zero.json")).Kind);
    }

    public void Dispose()
    {
        Plugin("DEL", Config());
        Exec("ip", ["netns", "delete", Netns], []);
        File.Delete("/run/netns/mbcni-notanetns");
    }
}
