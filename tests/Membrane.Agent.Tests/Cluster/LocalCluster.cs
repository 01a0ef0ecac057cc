using System.Diagnostics;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Kvstore.Tests;

namespace Membrane.Agent.Tests.Cluster;

/// <summary>
/// Agents in cluster mode on a real three-member etcd, each with its own sandbox (a simulated node <c>node-N</c>,
/// prefix <c>mbcluN</c>, pod ranges 10.21N.0.0/16 and fd00:21N::/64) and, when joined, a port on the test underlay
/// (10.250.0.N/24 in <see cref="Underlay"/>). Everything is removed on dispose, the agents killed first.
/// </summary>
public sealed class LocalCluster : IDisposable
{
    public const string Underlay = "mbclu-ul";
    private readonly Dictionary<int, (Process Agent, string Prefix, string State)> _nodes = [];

    public EtcdCluster Etcd { get; } = new();

    public static string Socket(int node) => Path.Combine(Path.GetTempPath(), $"mbclu{node}-state", "membrane.sock");

    public static string Prefix(int node) => $"mbclu{node}";

    public Process Agent(int node) => _nodes[node].Agent;

    /// <summary>Starts node N's agent; <paramref name="routing"/> non-null joins it to the underlay in that mode.</summary>
    public void Start(int node, string? routing = null, params string[] extra)
    {
        var (agent, code, stderr) = TryStart(node, routing, extra);
        _ = agent ?? throw new InvalidOperationException($"node {node}'s agent exited with {code}: {stderr}");
    }

    public (Process? Agent, int Code, string Stderr) TryStart(int node, string? routing = null, params string[] extra)
    {
        var prefix = Prefix(node);
        var state = Path.Combine(Path.GetTempPath(), $"{prefix}-state");
        if (!_nodes.ContainsKey(node))
        {
            Cleanup(prefix, state);
        }
        string[] joined = routing is null ? [] : ["--underlay-address", $"10.250.0.{node}/24", "--underlay-netns", Underlay,
            "--routing-mode",
            routing];
        var (agent, code, stderr) = AgentUnderTest.Start(["--state-dir", state, "--name-prefix", prefix, "--pin-dir",
            $"/sys/fs/bpf/{prefix}",
            "--pod-ipv4-range", $"10.21{node}.0.0/16", "--pod-ipv6-range", $"fd00:21{node}::/64", "--node", $"node-{node}", "--etcd",
            Etcd.Urls, .. joined, .. extra], () => File.Exists(Socket(node)) && OnNode(node, "status").Code == 0);
        if (agent is not null)
        {
            _nodes[node] = (agent, prefix, state);
        }
        return (agent, code, stderr);
    }

    /// <summary>Kills node N's agent with SIGKILL: its pods, maps and state stay, as after a crash.</summary>
    public void Kill(int node)
    {
        var agent = _nodes[node].Agent;
        agent.Kill();
        agent.WaitForExit();
    }

    public static (int Code, string Out, string Err) OnNode(int node, params string[] args) => AgentUnderTest.Cli(Socket(node), args);

    /// <summary>Runs the CLI and parses its JSON output (the command must succeed).</summary>
    public static JsonDocument Json(int node, params string[] args)
    {
        var output = OnNode(node, [.. args, "-o", "json"]);
        Assert.True(output.Code == 0, $"membrane {string.Join(' ', args)} on node {node}: {output.Err}{output.Out}");
        return JsonDocument.Parse(output.Out);
    }

    /// <summary>Namespace <c>shop</c> with <c>client</c> (app=client) and <c>web</c> (app=web, port 80) on the nodes named.</summary>
    public static string Shop(string clientNode, string webNode) => $$$"""
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: client, namespace: shop, labels: {app: client}}
        spec: {nodeName: {{{clientNode}}}, containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: shop, labels: {app: web}}
        spec: {nodeName: {{{webNode}}}, containers: [{name: w, ports: [{containerPort: 80}]}]}

        """;

    public static string Write(string yaml)
    {
        var file = Path.Combine(Path.GetTempPath(), $"mbclu-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(file, yaml);
        return file;
    }

    /// <summary>Polls (30 s deadline) until the command's exit code is <paramref name="expected"/>.</summary>
    public static bool Eventually(int node, int expected, params string[] args) => Eventually(() => OnNode(node, args).Code == expected);

    /// <summary>Polls (30 s deadline, 100 ms apart) until the condition holds.</summary>
    public static bool Eventually(Func<bool> condition, int seconds = 30)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(seconds))
        {
            if (condition())
            {
                return true;
            }
            Thread.Sleep(100);
        }
        return false;
    }

    public static string Run(string file, params string[] args) => Ip.Exec(file, args, null);

    private static void Cleanup(string prefix, string state) => AgentUnderTest.Cleanup(prefix, state, "--underlay-netns", Underlay);

    public void Dispose()
    {
        foreach (var (agent, _, _) in _nodes.Values)
        {
            if (!agent.HasExited)
            {
                agent.Kill();
                agent.WaitForExit();
            }
        }
        foreach (var (_, prefix, state) in _nodes.Values)
        {
            Cleanup(prefix, state);
        }
        if (NetworkNamespace.Exists(Underlay))
        {
            Ip.Run("netns", "delete", Underlay);
        }
        Etcd.Dispose();
    }
}
