using System.Diagnostics;
using System.Text.Json;
using static Membrane.Agent.Tests.Containers.CniAgentFixture;

namespace Membrane.Agent.Tests.Containers;

/// <summary>
/// The project's own CNI conformance harness: the installed plugin run as a runtime runs it (environment, config on
/// stdin, result or error JSON on stdout) against the running agent, for every command of CNI 1.0 and 1.1 (nothing
/// else here sends STATUS and GC).
/// </summary>
[Collection(CniAgentGroup.Name)]
public sealed class CniConformanceTests : IDisposable
{
    private const string Netns = "mbcni-conformance";
    private static string NetnsPath => $"/run/netns/{Netns}";

    public CniConformanceTests()
    {
        Dispose();
        Run("ip", "netns", "add", Netns);
    }

    private static string Config(string version = "1.1.0", string? socket = null, string extra = "") =>
        $$"""{"cniVersion":"{{version}}","name":"conformance","type":"membrane-cni","agentSocket":"{{socket ?? Socket}}"{{extra}}}""";

    private static (int Code, JsonElement Output) Plugin(string command, string config, string containerId = "conf1", string? netns = null,
        string ifName = "eth0", string args = "K8S_POD_NAMESPACE=default;K8S_POD_NAME=conformance")
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
        start.Environment["CNI_ARGS"] = args;
        start.Environment["CNI_PATH"] = BinDirectory;
        using var process = Process.Start(start)!;
        process.StandardInput.Write(config);
        process.StandardInput.Close();
        var stdout = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        using var document = JsonDocument.Parse(stdout.Length == 0 ? "null" : stdout);
        return (process.ExitCode, document.RootElement.Clone());
    }

    private static bool HasEndpoint() => AllEndpoints().Any(e => e.Pod == "default/conformance");

    [Fact]
    public void EveryCommandBehavesAsTheSpecificationSays()
    {
        var (code, version) = Plugin("VERSION", Config());
        Assert.Equal(0, code);
        Assert.Contains("1.1.0", version.GetProperty("supportedVersions").EnumerateArray().Select(v => v.GetString()));
        Assert.Equal(0, Plugin("STATUS", Config()).Code);

        var (added, result) = Plugin("ADD", Config());
        Assert.True(added == 0, result.ToString());
        Assert.Equal("1.1.0", result.GetProperty("cniVersion").GetString());
        var sandbox = result.GetProperty("interfaces")[1];
        Assert.Equal(NetnsPath, sandbox.GetProperty("sandbox").GetString());
        Assert.Equal(2, result.GetProperty("ips").GetArrayLength());
        Assert.True(HasEndpoint());
        Assert.Equal(0, Plugin("CHECK", Config()).Code);
        Assert.Equal(0, Plugin("ADD", Config()).Code); // a repeated ADD changes nothing

        // CHECK notices an address taken off the container's interface.
        var v4 = result.GetProperty("ips")[0].GetProperty("address").GetString()!;
        Run("ip", "-n", Netns, "addr", "del", v4, "dev", "eth0");
        var (checkCode, checkError) = Plugin("CHECK", Config());
        Assert.NotEqual(0, checkCode);
        Assert.Contains(v4.Split('/')[0], checkError.GetProperty("msg").GetString() + checkError.ToString());

        // GC keeps what the runtime lists and removes the rest.
        var listed = Config(extra: ""","cni.dev/valid-attachments":[{"containerID":"conf1","ifname":"eth0"}]""");
        Assert.Equal(0, Plugin("GC", listed).Code);
        Assert.True(HasEndpoint());
        Assert.Equal(0, Plugin("GC", Config(extra: ""","cni.dev/valid-attachments":[]""")).Code);
        Assert.False(HasEndpoint());
        Assert.Empty(OwnInterfaces());

        // DEL is idempotent, and succeeds when the namespace is gone.
        Assert.Equal(0, Plugin("ADD", Config()).Code);
        Run("ip", "netns", "delete", Netns);
        Assert.Equal(0, Plugin("DEL", Config()).Code);
        Assert.Equal(0, Plugin("DEL", Config()).Code);
        Assert.False(HasEndpoint());
        Assert.Empty(OwnInterfaces());
        Assert.Equal("", PodRoutes());
    }

    [Fact]
    public void WithTheAgentAwayAddIsTryAgainLaterAndLeavesNothingStatusIsUnavailableDelIsQueued()
    {
        var away = Path.Combine(Root, "no-agent", "membrane.sock");
        var (code, error) = Plugin("ADD", Config(socket: away));
        Assert.Equal(1, code);
        Assert.Equal(11, error.GetProperty("code").GetInt32());
        Assert.Contains("membrane agent --runtime cni", error.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.Equal("", Run("ip", "-n", Netns, "-br", "link", "show", "type", "veth"));
        Assert.Empty(OwnInterfaces());
        Assert.Equal(50, Plugin("STATUS", Config(socket: away)).Output.GetProperty("code").GetInt32());
        Assert.Equal(0, Plugin("DEL", Config(socket: away)).Code);
        Assert.True(File.Exists(Path.Combine(Root, "no-agent", "cni-delete-queue", "conf1-eth0.json")));
    }

    [Fact]
    public void BadInputIsACniErrorThatNamesTheProblem()
    {
        var (code, error) = Plugin("ADD", Config(version: "9.9.9"));
        Assert.Equal((1, 1), (code, error.GetProperty("code").GetInt32()));
        (code, error) = Plugin("ADD", "{not json");
        Assert.Equal((1, 6), (code, error.GetProperty("code").GetInt32()));
        (code, error) = Plugin("ADD", Config(), args: "IgnoreUnknown=1");
        Assert.Equal(1, code);
        Assert.Contains("K8S_POD_NAME", error.GetProperty("msg").GetString(), StringComparison.Ordinal);
        (code, error) = Plugin("ADD", Config(), netns: "/etc/passwd");
        Assert.Equal(1, code);
        Assert.Contains("CNI_NETNS", error.GetProperty("msg").GetString(), StringComparison.Ordinal);
        (code, error) = Plugin("ADD", Config(), ifName: "../../x");
        Assert.Equal(1, code);
        Assert.Contains("CNI_IFNAME", error.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.False(HasEndpoint());
        Assert.Empty(OwnInterfaces());
    }

    [Fact]
    public void ChainedAddPassesPrevResultOnUnchangedAndUsesItsAddresses()
    {
        // What bridge + host-local would have made: a veth into the namespace with an address.
        Run("ip", "link", "add", "mbcniconf0", "type", "veth", "peer", "name", "eth0", "netns", NetnsPath);
        try
        {
            Run("ip", "-n", Netns, "addr", "add", "10.212.0.7/24", "dev", "eth0");
            var previous = $$"""{"cniVersion":"1.0.0","interfaces":[{"name":"mbcniconf0"},{"name":"eth0","sandbox":"{{NetnsPath}}"}],""" +
                "\"ips\":[{\"address\":\"10.212.0.7/24\",\"interface\":1}]}";
            var (code, output) = Plugin("ADD", Config(version: "1.0.0", extra: $",\"prevResult\":{previous}"));
            Assert.True(code == 0, output.ToString());
            Assert.Equal(JsonDocument.Parse(previous).RootElement.ToString(), output.ToString());
            var endpoint = Endpoint("default/conformance");
            Assert.Equal("10.212.0.7", endpoint.IPv4);
            Assert.Equal("mbcniconf0", endpoint.Interface);
            Assert.Equal(0, Plugin("DEL", Config(version: "1.0.0", extra: $",\"prevResult\":{previous}")).Code);
            Assert.False(HasEndpoint());
            Assert.Contains("mbcniconf0", Run("ip", "-br", "link", "show", "mbcniconf0")); // the earlier plugin's to remove
        }
        finally
        {
            Exec("ip", ["link", "delete", "mbcniconf0"], []);
        }
    }

    public void Dispose()
    {
        Plugin("DEL", Config());
        if (File.Exists(NetnsPath))
        {
            Run("ip", "netns", "delete", Netns);
        }
    }
}
