using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// What is enforced, what is remembered and what is reported stay equal: a refused change leaves kernel, memory
/// and disk as they were; a state file the agent cannot write or read never silently changes enforcement.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class DriftTests
{
    private readonly SandboxFixture _s;
    private const string Server = "e2e-a/server";

    public DriftTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private static string StateFile => Path.Combine(SandboxFixture.StateDirectory, "state.json");

    private static string Pod(string name, params string[] ips) =>
        $"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: e2e-a, labels: {{app: {name}}}}}\nspec: {{containers: " +
            $"[{{name: c}}]}}\n"
        + $"status: {{podIPs: [{string.Join(", ", ips.Select(ip => $"{{ip: \"{ip}\"}}"))}]}}\n";

    private static string Cnp(string name, string spec) => SandboxFixture.Cnp(name, spec);

    /// <summary>Everything that must not move: the API's view, the kernel's ipcache and policy, and the file.</summary>
    private (string Endpoints, string IpCache, string Policy, string Policies, string State) Observe() => (
        _s.CliOk("endpoint", "list", "-o", "json").Out,
        _s.CliOk("bpf", "ipcache", "list", "-o", "json").Out,
        _s.CliOk("bpf", "policy", "get", Server, "-o", "json").Out,
        _s.CliOk("policy", "get", "-o", "json").Out,
        File.ReadAllText(StateFile));

    [Fact]
    public void PodAddressesAreCheckedBeforeAnythingChanges()
    {
        var server = _s.Endpoint(Server);
        var before = Observe();
        foreach (var (yaml, expected) in new[]
        {
            (Pod("thief", server.IPv4!, "fd00:200::7777"), $"{server.IPv4} is already used by Pod/e2e-a/server"),
            (Pod("thief6", "10.200.77.77", server.IPv6!), $"{server.IPv6} is already used by Pod/e2e-a/server"),
            (Pod("gateway", "10.200.0.1", "fd00:200::7778"), "10.200.0.1 is the node's own address"),
            (Pod("v4only", "10.200.77.78"), "must name one IPv4 and one IPv6 address"),
            (Pod("outside", "192.0.2.5", "fd00:200::7779"), "outside the pod ranges"),
            (Pod("twins-a", "10.200.77.80", "fd00:200::7780") + "---\n" + Pod("twins-b", "10.200.77.80", "fd00:200::7781"),
                "10.200.77.80 is already used by Pod/e2e-a/twins-a"),
        })
        {
            var r = _s.Apply(yaml);
            Assert.True(r.Code == 1, $"accepted: {yaml}");
            Assert.Contains(expected, r.Err, StringComparison.Ordinal);
        }
        Assert.Equal(before, Observe());
        Assert.DoesNotContain("mbe2e-" + PodNetwork.Hash("e2e-a/thief"), Ip.Run("netns", "list"), StringComparison.Ordinal);

        // The refused requests left nothing behind that stops a restart.
        _s.KillAgent();
        _s.StartAgent();
        Assert.Equal(before.IpCache, Observe().IpCache);
    }

    [Fact]
    public void AChangeThatOverflowsThePolicyMapIsRefusedWhole()
    {
        // 400 CIDRs x 400 ports on each of the two pods of e2e-a: 320,000 entries for a map of 262,144.
        var cidrs = string.Join(", ", Enumerable.Range(0, 400).Select(i => $"\"198.18.{i / 250}.{i % 250}/32\""));
        var ports = string.Join(", ", Enumerable.Range(1000, 400).Select(p => $"{{port: \"{p}\", protocol: TCP}}"));
        var yaml = Cnp("overflow", $"endpointSelector: {{}}\ningress:\n- fromCIDR: [{cidrs}]\n  toPorts: [{{ports: [{ports}]}}]");
        var before = Observe();
        var r = _s.Apply(yaml, "import");
        Assert.Equal(1, r.Code);
        Assert.Contains("the policy map mb_policy would need", r.Err, StringComparison.Ordinal);
        Assert.Contains("holds 262,144", r.Err, StringComparison.Ordinal);
        Assert.Contains("nothing was changed", r.Err, StringComparison.Ordinal);
        Assert.Equal(before, Observe());
        var status = JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out, AgentJsonContext.Default.StatusResponse)!;
        var fill = Assert.Single(status.Maps!, m => m.Name == "mb_policy");
        Assert.Equal(262_144, fill.MaxEntries);
        Assert.True(fill.Entries < 1000, $"{fill.Entries} entries after a refused change");
    }

    [Fact]
    public void AStateDirectoryThatCannotBeWrittenUndoesTheChange()
    {
        var before = Observe();
        // Root ignores file modes: a read-only bind mount is what makes the directory unwritable for it.
        Ip.Exec("mount", ["--bind", SandboxFixture.StateDirectory, SandboxFixture.StateDirectory], null);
        try
        {
            Ip.Exec("mount", ["-o", "remount,ro,bind", SandboxFixture.StateDirectory], null);
            var r = _s.Apply(Cnp("unsaved", "endpointSelector: {matchLabels: {app: server}}\ningress: [{}]"), "import");
            Assert.Equal(1, r.Code);
            Assert.Contains("cannot write the state file", r.Err, StringComparison.Ordinal);
            Assert.Contains("the change was undone", r.Err, StringComparison.Ordinal);
        }
        finally
        {
            Ip.Exec("umount", [SandboxFixture.StateDirectory], null);
        }
        Assert.Equal(before, Observe());
        _s.KillAgent();
        _s.StartAgent();
        Assert.Equal(before.Policies, Observe().Policies);
    }

    [Fact]
    public void ALostOrCorruptStateFileStopsTheStartWithARecipe()
    {
        _s.Apply(Cnp("kept", "endpointSelector: {matchLabels: {app: server}}\ningress: [{}]"), "import");
        var before = Observe();
        var saved = File.ReadAllText(StateFile);
        var backup = StateFile + ".bak";
        _s.KillAgent();
        try
        {
            foreach (var (content, expected) in new (string?, string)[]
            {
                ("", "cannot be read"),
                ("null", "cannot be read (it holds null)"),
                (saved[..(saved.Length / 2)], "cannot be read"),
                (null, "is missing but its backup exists"),
            })
            {
                if (content is null)
                {
                    File.Delete(StateFile);
                }
                else
                {
                    File.WriteAllText(StateFile, content);
                }
                var (started, code, stderr) = _s.TryStartAgent();
                Assert.False(started, $"the agent started on a state file of {content?.Length} characters");
                Assert.NotEqual(134, code);
                Assert.Contains(expected, stderr, StringComparison.Ordinal);
                Assert.Contains($"cp {backup} {StateFile}", stderr, StringComparison.Ordinal);
            }
            // Without the file and its backup, the pinned maps still enforce three pods: no silent empty start.
            File.Move(backup, backup + ".aside");
            var lost = _s.TryStartAgent();
            Assert.False(lost.Started);
            Assert.Contains("the pinned maps still enforce policy for 3 endpoint(s)", lost.Stderr, StringComparison.Ordinal);
            File.Move(backup + ".aside", backup);
        }
        finally
        {
            File.WriteAllText(StateFile, saved);
            _s.StartAgent();
        }
        Assert.Equal(before.Policies, Observe().Policies);
        Assert.Equal(before.Policy, Observe().Policy);
    }

    [Fact]
    public void StateAndLogsAreRootsOnly()
    {
        const UnixFileMode others = UnixFileMode.GroupRead | UnixFileMode.GroupWrite | UnixFileMode.GroupExecute
            | UnixFileMode.OtherRead | UnixFileMode.OtherWrite | UnixFileMode.OtherExecute;
        foreach (var path in new[] { SandboxFixture.StateDirectory, StateFile, StateFile + ".bak",
            Path.Combine(SandboxFixture.StateDirectory, "logs") })
        {
            Assert.True((File.GetUnixFileMode(path) & others) == 0, $"{path} is {File.GetUnixFileMode(path)}");
        }
    }
}
