using System.Diagnostics;
using Membrane.Agent;
using Membrane.Agent.Cni;
using Membrane.Agent.Http;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Api;

namespace Membrane.Bench;

/// <summary>CNI ADD and DEL latency: through the plugin executable (cold start included) and the agent's own part.</summary>
public sealed record CniLatencyResult(
    int Containers, string Plugin, double AddP50, double AddP99, double DelP50, double DelP99, double AgentAddP50, double AgentAddP99,
    double AgentDelP50, double AgentDelP99, int EnforcedAtReturn);

/// <summary>
/// An agent with <c>--runtime cni</c> hosted in-process and the built plugin run as a runtime runs it. Rounds
/// interleave: container 2k goes through the plugin process (what a runtime sees), 2k+1 through the agent directly
/// (its share). Each plugin-added container pings a pod whose policy admits only its labels at once when ADD
/// returns: the ping gets through only if its identity and the policy are already in the kernel.
/// </summary>
public sealed class CniBenchmark : IAsyncDisposable
{
    private const string Prefix = "mbbcni";
    private readonly string _state = Path.Combine(Path.GetTempPath(), "mbbcni-state");
    private readonly CancellationTokenSource _stop = new();
    private readonly AgentService _agent;
    private readonly Task _host;

    private CniBenchmark()
    {
        Cleanup();
        var options = new AgentOptions
        {
            StateDirectory = _state,
            NamePrefix = Prefix,
            PinDirectory = $"/sys/fs/bpf/{Prefix}",
            Runtime = AgentRuntime.Cni,
            PodIPv4Range = System.Net.IPNetwork.Parse("10.202.0.0/16"),
            PodIPv6Range = System.Net.IPNetwork.Parse("fd00:202::/64"),
        };
        var attachments = new CniAttachments();
        _agent = AgentService.Start(options, new CniRuntime(options, attachments), new LocalObjectStore(), null, attachments);
        _host = ApiServer.RunAsync(_agent, _stop.Token);
    }

    /// <summary>The plugin as built (framework-dependent) or published (Native AOT) in the source tree.</summary>
    public static IEnumerable<(string Name, string Path)> Plugins()
    {
        var root = new DirectoryInfo(AppContext.BaseDirectory);
        while (root is not null && !File.Exists(Path.Combine(root.FullName, "Membrane.slnx")))
        {
            root = root.Parent;
        }
        var candidates = new[]
        {
            ("framework-dependent",
                Path.Combine(root?.FullName ?? "/", "src", "Membrane.Cni", "bin", "Release", "net10.0", "membrane-cni")),
            ("Native AOT", Path.Combine(root?.FullName ?? "/", "artifacts", "cni-aot", "membrane-cni")),
        };
        return candidates.Where(c => File.Exists(c.Item2));
    }

    public static async Task<List<CniLatencyResult>> RunAsync(int containers)
    {
        var results = new List<CniLatencyResult>();
        await using var bench = new CniBenchmark();
        await bench.PrepareAsync(containers).ConfigureAwait(false);
        foreach (var (name, plugin) in Plugins())
        {
            results.Add(await bench.MeasureAsync(name, plugin, containers).ConfigureAwait(false));
        }
        return results;
    }

    private async Task PrepareAsync(int containers)
    {
        for (var i = 0; i < 100 && !File.Exists(_agent.Options.SocketPath); i++)
        {
            await Task.Delay(50).ConfigureAwait(false);
        }
        var objects = new System.Text.StringBuilder("""
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: web, namespace: default}
            spec:
              endpointSelector: {matchLabels: {app: web}}
              ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 8}]}]}]
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: web, labels: {app: web}}
            spec: {containers: [{name: c}]}
            """);
        for (var i = 0; i < containers; i++)
        {
            objects.Append($"\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: c{i}, labels: {{app: client}}}}\n" +
                "spec: {containers: [{name: c}]}\n");
        }
        await _agent.Objects.ApplyAsync(new ManifestRequest(objects.ToString(), "cni-bench.yaml")).ConfigureAwait(false);
        Ip.Run("netns", "add", $"{Prefix}-web");
        await _agent.Cni!.AddAsync(Request("web", $"/run/netns/{Prefix}-web")).ConfigureAwait(false);
    }

    private static CniAttachmentRequest Request(string pod, string? netns) =>
        new($"bench-{pod}", "eth0", netns, "default", pod, null, "1.0.0");

    private async Task<CniLatencyResult> MeasureAsync(string name, string plugin, int containers)
    {
        var web = _agent.Pod("default/web")!.Value.Endpoint.Address(System.Net.Sockets.AddressFamily.InterNetwork)!.ToString();
        List<double> add = [], del = [], agentAdd = [], agentDel = [];
        var enforced = 0;
        for (var i = 0; i < 2 * containers; i++)
        {
            var pod = $"c{i / 2}";
            var netns = $"{Prefix}-{pod}";
            Ip.Run("netns", "add", netns);
            try
            {
                if (i % 2 == 0)
                {
                    add.Add(RunPlugin(plugin, "ADD", pod, netns));
                    enforced += Pings(netns, web) ? 1 : 0;
                    del.Add(RunPlugin(plugin, "DEL", pod, netns));
                }
                else
                {
                    var watch = Stopwatch.StartNew();
                    await _agent.Cni!.AddAsync(Request(pod, $"/run/netns/{netns}")).ConfigureAwait(false);
                    agentAdd.Add(watch.Elapsed.TotalMilliseconds);
                    watch.Restart();
                    await _agent.Cni!.DelAsync(Request(pod, null)).ConfigureAwait(false);
                    agentDel.Add(watch.Elapsed.TotalMilliseconds);
                }
            }
            finally
            {
                Ip.Run("netns", "delete", netns);
            }
        }
        double P(List<double> v, double p) => Math.Round(SandboxBenchmark.Percentile(v, p), 1);
        return new CniLatencyResult(containers, name, P(add, 50), P(add, 99), P(del, 50), P(del, 99), P(agentAdd, 50), P(agentAdd, 99),
            P(agentDel, 50), P(agentDel, 99), enforced);
    }

    private static bool Pings(string netns, string target)
    {
        try
        {
            Ip.Exec("ip", ["netns", "exec", netns, "ping", "-c1", "-W1", target], null);
            return true;
        }
        catch (InvalidOperationException)
        {
            return false; // no answer: the first packet was not let through at once
        }
    }

    private double RunPlugin(string plugin, string command, string pod, string netns)
    {
        var start = new ProcessStartInfo(plugin)
        {
            RedirectStandardInput = true,
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        start.Environment["CNI_COMMAND"] = command;
        start.Environment["CNI_CONTAINERID"] = $"bench-{pod}";
        start.Environment["CNI_NETNS"] = $"/run/netns/{netns}";
        start.Environment["CNI_IFNAME"] = "eth0";
        start.Environment["CNI_ARGS"] = $"K8S_POD_NAMESPACE=default;K8S_POD_NAME={pod}";
        start.Environment["CNI_PATH"] = Path.GetDirectoryName(plugin);
        var watch = Stopwatch.StartNew();
        using var process = Process.Start(start)!;
        process.StandardInput.Write(
            $$"""{"cniVersion":"1.0.0","name":"bench","type":"membrane-cni","agentSocket":"{{_agent.Options.SocketPath}}"}""");
        process.StandardInput.Close();
        var output = process.StandardOutput.ReadToEnd();
        process.WaitForExit();
        var elapsed = watch.Elapsed.TotalMilliseconds;
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"membrane-cni {command} failed: {output}");
        }
        return elapsed;
    }

    private void Cleanup()
    {
        foreach (var line in Ip.Run("netns", "list").Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var ns = line.Split(' ')[0];
            if (ns.StartsWith(Prefix + "-", StringComparison.Ordinal))
            {
                Ip.Run("netns", "delete", ns);
            }
        }
        CniRuntime.RemoveInterfaces(Prefix);
        foreach (var directory in new[] { $"/sys/fs/bpf/{Prefix}", _state }.Where(Directory.Exists))
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _agent.Cni!.DelAsync(Request("web", null)).ConfigureAwait(false);
            await _stop.CancelAsync().ConfigureAwait(false);
            await _host.ConfigureAwait(false);
        }
        finally
        {
            _agent.Dispose();
            _stop.Dispose();
            Cleanup();
        }
    }
}
