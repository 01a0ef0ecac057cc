using System.Diagnostics;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// kill -9 of the agent at random points of apply, delete and import: after every restart the kernel, the state
/// file and the API agree, and nothing is orphaned. Rounds: MEMBRANE_CRASH_ROUNDS (default 20; 100 for a long run).
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class CrashConsistencyTests
{
    private readonly SandboxFixture _s;

    public CrashConsistencyTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private static string Pod(int n) =>
        $"apiVersion: v1\nkind: Pod\nmetadata: {{name: crash-{n}, namespace: e2e-a, labels: {{app: crash, n: \"{n}\"}}}}\nspec: " +
            $"{{containers: [{{name: c, ports: [{{containerPort: 80}}]}}]}}\n";

    private static string Policy(int n) =>
        $"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: crash-{n}, namespace: e2e-a}}\nspec:\n"
        + $"  endpointSelector: {{matchLabels: {{app: server}}}}\n  ingress: [{{fromEndpoints: [{{matchLabels: {{n: \"{n}\"}}}}], " +
            $"toPorts: [{{ports: [{{port: \"{8000 + n}\", protocol: TCP}}]}}]}}]\n";

    /// <summary>Starts a CLI command without waiting for it.</summary>
    private static Process Start(params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add(SandboxFixture.MembraneDll);
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        start.Environment["MEMBRANE_SOCKET"] = SandboxFixture.Socket;
        var p = Process.Start(start)!;
        p.BeginOutputReadLine();
        p.BeginErrorReadLine();
        return p;
    }

    [Fact]
    public void KillMinusNineAtRandomPointsOfChangesLeavesEverythingInAgreement()
    {
        var rounds = int.TryParse(Environment.GetEnvironmentVariable("MEMBRANE_CRASH_ROUNDS"), out var r) ? r : 20;
        var random = new Random(4242);
        var files = new List<string>();
        try
        {
            for (var round = 0; round < rounds; round++)
            {
                var n = random.Next(4);
                var isPod = random.Next(2) == 0;
                var file = SandboxFixture.WriteYaml(isPod ? Pod(n) : Policy(n));
                files.Add(file);
                using var command = random.Next(3) == 0 ? Start("delete", "-f", file)
                    : isPod ? Start("apply", "-f", file) : Start("policy", "import", file);
                // The CLI needs a few hundred ms to start; the agent's part of a change takes tens of ms. Spread
                // the kill over both so some land before, during and after the agent's work.
                Thread.Sleep(random.Next(150, 900));
                _s.KillAgent();
                command.WaitForExit();
                var (started, code, stderr) = _s.TryStartAgent();
                Assert.True(started, $"round {round}: the agent did not restart ({code}): {stderr}");
                AssertInAgreement(round);
            }
        }
        finally
        {
            files.ForEach(File.Delete);
        }
    }

    /// <summary>API, kernel, state file and the sandbox's namespaces describe the same pods and policies.</summary>
    private void AssertInAgreement(int round)
    {
        var endpoints = JsonSerializer.Deserialize(_s.CliOk("endpoint", "list", "-o", "json").Out,
            AgentJsonContext.Default.ListEndpointOutput)!;
        var policies = JsonSerializer.Deserialize(_s.CliOk("policy", "get", "-o", "json").Out,
            AgentJsonContext.Default.PolicyListResponse)!;
        var ipcache = JsonSerializer.Deserialize(_s.CliOk("bpf", "ipcache", "list", "-o", "json").Out,
            AgentJsonContext.Default.ListIpCacheOutput)!;
        using var state = JsonDocument.Parse(File.ReadAllText(Path.Combine(SandboxFixture.StateDirectory, "state.json")));
        var objects = state.RootElement.GetProperty("objects").EnumerateObject().Select(o => o.Name).ToHashSet();

        var pods = endpoints.Select(e => e.Pod).Order(StringComparer.Ordinal).ToList();
        Assert.Equal(objects.Where(o => o.StartsWith("Pod/", StringComparison.Ordinal)).Select(o => o[4..]).Order(StringComparer.Ordinal),
            pods);
        Assert.Equal(objects.Where(o => o.StartsWith("CiliumNetworkPolicy/", StringComparison.Ordinal)).Order(StringComparer.Ordinal),
            policies.Policies.Select(p => $"{p.Kind}/{p.Namespace}/{p.Name}").Order(StringComparer.Ordinal));
        // Nothing orphaned: every sandbox namespace is a pod's (or the node's), and every pod has its namespace.
        var namespaces = Ip.Run("netns", "list").Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => l.Split(' ')[0])
            .Where(n => n.StartsWith(SandboxFixture.Prefix + "-", StringComparison.Ordinal) && n != $"{SandboxFixture.Prefix}-node")
                .Order(StringComparer.Ordinal);
        Assert.Equal(endpoints.Select(e => e.Netns).Order(StringComparer.Ordinal), namespaces);
        foreach (var endpoint in endpoints)
        {
            // The kernel holds exactly the endpoint's resolved policy, and maps its addresses to its identity.
            var kernel = JsonSerializer.Deserialize(_s.CliOk("bpf", "policy", "get", endpoint.Pod, "-o", "json").Out,
                AgentJsonContext.Default.BpfPolicyOutput)!;
            Assert.True(kernel.Entries.Count == endpoint.PolicyEntries,
                $"round {round}: {endpoint.Pod} has {kernel.Entries.Count} entries in the kernel, {endpoint.PolicyEntries} resolved");
            Assert.Contains(ipcache, e => e.Prefix == $"{endpoint.IPv4}/32" && e.Identity == endpoint.Identity);
            Assert.Contains(ipcache, e => e.Prefix == $"{endpoint.IPv6}/128" && e.Identity == endpoint.Identity);
        }
        // The pods' addresses, the node's three, the node-scoped prefixes (fe80::/10, multicast, ...) and the two world
        // prefixes (0.0.0.0/0, ::/0), nothing else.
        Assert.True(endpoints.Count * 2 + 5 + Endpoints.NodeScope.Prefixes.Count == ipcache.Count,
            $"round {round}: ipcache {string.Join(", ", ipcache.Select(e => $"{e.Prefix}={e.Identity}"))}");
    }
}
