using System.Text.Json;

namespace Membrane.Cni.Tests;

/// <summary>
/// The plugin's side of the CNI protocol, run as a runtime runs it (environment, stdin, stdout, exit status), with
/// no agent listening: versions, precise errors for bad input, and what CNI requires when the agent is away (ADD
/// refused with "try again later", DEL queued and still successful, STATUS "not available").
/// </summary>
public sealed class ProtocolTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("membrane-cni-test-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    private string Socket => Path.Combine(_directory, "absent.sock");

    private string Queue => Path.Combine(_directory, "queue");

    private string Config(string version = "1.0.0", string extra = "") =>
        $$"""
        {"cniVersion": "{{version}}", "name": "membrane", "type": "membrane-cni",
         "agentSocket": "{{Socket}}", "deleteQueue": "{{Queue}}"{{extra}}}
        """;

    private static async Task<(int Code, JsonElement Output)> Run(string command, string stdin, params (string Name, string Value)[] env)
    {
        var variables = new Dictionary<string, string>(StringComparer.Ordinal) { ["CNI_COMMAND"] = command };
        foreach (var (name, value) in env)
        {
            variables[name] = value;
        }
        var stdout = new StringWriter();
        var code = await CniPlugin.RunAsync(n => variables.GetValueOrDefault(n), new StringReader(stdin), stdout);
        var text = stdout.ToString();
        return (code, text.Length == 0 ? default : JsonDocument.Parse(text).RootElement.Clone());
    }

    private static readonly (string, string)[] Container =
        [("CNI_CONTAINERID", "c0ffee"), ("CNI_NETNS", "/run/netns/test"), ("CNI_IFNAME", "eth0"), ("CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAME=web")];

    [Fact]
    public async Task VersionListsWhatThePluginSpeaks()
    {
        var (code, output) = await Run("VERSION", Config("1.1.0"));
        Assert.Equal(0, code);
        Assert.Equal("1.1.0", output.GetProperty("cniVersion").GetString());
        Assert.Equal(["1.0.0", "1.1.0"], output.GetProperty("supportedVersions").EnumerateArray().Select(v => v.GetString()));
    }

    [Theory]
    [InlineData("ADD", "CNI_NETNS")]
    [InlineData("DEL", "CNI_CONTAINERID")]
    [InlineData("CHECK", "CNI_IFNAME")]
    public async Task AMissingVariableIsErrorFourNamingIt(string command, string missing)
    {
        var (code, output) = await Run(command, Config(), Container.Where(v => v.Item1 != missing).ToArray());
        Assert.Equal(1, code);
        Assert.Equal(4, output.GetProperty("code").GetInt32());
        Assert.Contains(missing, output.GetProperty("msg").GetString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("{not json", 6, "not JSON")]
    [InlineData("""{"cniVersion": "0.3.1", "name": "n", "type": "membrane-cni"}""", 1, "0.3.1 is not supported")]
    [InlineData("""{"cniVersion": "1.0.0", "type": "membrane-cni"}""", 7, "no \"name\"")]
    [InlineData("""{"cniVersion": "1.0.0", "name": "n", "type": "membrane-cni", "prevResult": 3}""", 7, "\"prevResult\" must be an object")]
    [InlineData("""{"cniVersion": "1.0.0", "name": "n", "type": "membrane-cni", "cni.dev/valid-attachments": [{"ifname": "eth0"}]}""", 7,
        "valid-attachments")]
    public async Task BadConfigurationIsAPreciseCniError(string config, int expected, string message)
    {
        var (code, output) = await Run("ADD", config, Container);
        Assert.Equal(1, code);
        Assert.Equal(expected, output.GetProperty("code").GetInt32());
        Assert.Contains(message, output.GetProperty("msg").GetString(), StringComparison.Ordinal);
    }

    [Fact]
    public async Task AddWithTheAgentAwayIsTryAgainLaterAndLeavesNothing()
    {
        var (code, output) = await Run("ADD", Config(), Container);
        Assert.Equal(1, code);
        Assert.Equal(11, output.GetProperty("code").GetInt32());
        Assert.Contains("not reachable", output.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(_directory)); // no queue entry, no socket, nothing
    }

    [Fact]
    public async Task DelWithTheAgentAwaySucceedsAndIsQueuedOnceHoweverOftenItComes()
    {
        for (var i = 0; i < 3; i++)
        {
            var (code, _) = await Run("DEL", Config(), Container);
            Assert.Equal(0, code);
        }
        var queued = Assert.Single(Directory.GetFiles(Queue));
        using var entry = JsonDocument.Parse(File.ReadAllText(queued));
        Assert.Equal("c0ffee", entry.RootElement.GetProperty("containerId").GetString());
        Assert.Equal("eth0", entry.RootElement.GetProperty("ifName").GetString());
        Assert.Equal("default", entry.RootElement.GetProperty("podNamespace").GetString());
        Assert.Equal("web", entry.RootElement.GetProperty("podName").GetString());
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(queued));
    }

    [Fact]
    public async Task AQueueAnotherUserPreparedIsNeverWrittenThrough()
    {
        // A queue directory another user owns: refused with an I/O error, nothing written into it.
        Directory.CreateDirectory(Queue);
        using (var chown = System.Diagnostics.Process.Start("chown", ["65534", Queue]))
        {
            chown.WaitForExit();
        }
        var (code, output) = await Run("DEL", Config(), Container);
        Assert.Equal((1, 5), (code, output.GetProperty("code").GetInt32()));
        Assert.Contains("owned by uid 65534", output.GetProperty("msg").GetString(), StringComparison.Ordinal);
        Assert.Empty(Directory.GetFileSystemEntries(Queue));

        // root's own queue with a link planted where the entry's temporary file goes: the link is replaced, not followed.
        Directory.Delete(Queue);
        Directory.CreateDirectory(Queue, UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute);
        var victim = Path.Combine(_directory, "victim");
        File.WriteAllText(victim, "root's file");
        File.CreateSymbolicLink(Path.Combine(Queue, "c0ffee-eth0.json.tmp"), victim);
        Assert.Equal(0, (await Run("DEL", Config(), Container)).Code);
        Assert.Equal("root's file", File.ReadAllText(victim));
        Assert.Equal("c0ffee", JsonDocument.Parse(File.ReadAllText(Path.Combine(Queue, "c0ffee-eth0.json"))).RootElement
            .GetProperty("containerId").GetString());
    }

    [Fact]
    public async Task DelAfterTheNetnsIsGoneNeedsNoNetns()
    {
        var (code, _) = await Run("DEL", Config(), Container.Where(v => v.Item1 != "CNI_NETNS").ToArray());
        Assert.Equal(0, code);
    }

    [Fact]
    public async Task StatusWithTheAgentAwayIsNotAvailable()
    {
        var (code, output) = await Run("STATUS", Config("1.1.0"));
        Assert.Equal(1, code);
        Assert.Equal(50, output.GetProperty("code").GetInt32());
        Assert.Equal("1.1.0", output.GetProperty("cniVersion").GetString());
    }

    [Fact]
    public async Task AQueueEntryCannotEscapeTheQueueDirectory()
    {
        var (code, _) = await Run("DEL", Config(), ("CNI_CONTAINERID", "../../etc/x"), ("CNI_IFNAME", "eth0"));
        Assert.Equal(0, code);
        var queued = Assert.Single(Directory.GetFiles(Queue));
        Assert.Equal(Queue, Path.GetDirectoryName(queued));
    }
}
