using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Cli;
using Membrane.Cli.Commands;
using Membrane.Datapath.Maps;
using Membrane.Kvstore;

namespace Membrane.Bench;

public sealed record ClusterLatencyResult(int Nodes, int Changes, double P50, double P99, double Max);

/// <summary>
/// One path's cross-node throughput; <see cref="CrossNodePingOverLegacy"/>, on the host-routing row, is its cross-node ping rate
/// over the legacy path's in the same rounds (what the shortcut gains); <see cref="CrossNodePingOverNoFiltering"/> over the same
/// shape's with no filtering at all (<see cref="PlainTopology"/>), where measured.
/// </summary>
public sealed record CrossNodeThroughputResult(string RoutingMode, double SameNodePingPerSecond, double CrossNodePingPerSecond,
    double PingRatio, double SameNodeTcpMegabytesPerSecond, double CrossNodeTcpMegabytesPerSecond, double TcpRatio,
    double? CrossNodePingOverLegacy = null, double? CrossNodePingOverNoFiltering = null);

public sealed record ClusterStoreResult(int Pods, int Keys, long KeyValueBytes, long DatabaseBytesBefore, long DatabaseBytesAfter);

public sealed record ClusterReport(ClusterLatencyResult Propagation, double IdentitiesPerSecond, int IdentitiesAllocated,
    IReadOnlyList<CrossNodeThroughputResult> Throughput, double QuorumRecoverySeconds, int LeaseSeconds, ClusterStoreResult Store);

/// <summary>
/// Several nodes on one machine through <c>membrane cluster up</c> (etcd with three members, an agent per node):
/// propagation of a policy change to every node (seen by real traffic on each), identity allocation rate, cross-node
/// throughput against same-node in the same cluster (native routing and VXLAN), recovery after a quorum loss, and
/// what 1,000 pods cost the store.
/// </summary>
public static class ClusterBenchmark
{
    private const int Lease = 5;

    public static async Task<ClusterReport> RunAsync(int changes = 40, int pings = SandboxBenchmark.PingsPerRun, int rounds = 5)
    {
        var throughput = new List<CrossNodeThroughputResult>();
        ClusterLatencyResult propagation;
        double recovery;
        using (var cluster = Up(3, "native"))
        {
            propagation = await cluster.PropagationAsync(changes).ConfigureAwait(false);
            using var plain = PlainTopology.Create(tunnel: false);
            throughput.AddRange(cluster.Throughput(pings, rounds, plain));
            recovery = await cluster.QuorumRecoveryAsync().ConfigureAwait(false);
        }
        throughput.AddRange(Throughput("tunnel", rounds, pings));
        var (rate, allocated, store) = await StoreAsync().ConfigureAwait(false);
        return new ClusterReport(propagation, rate, allocated, throughput, recovery, Lease, store);
    }

    /// <summary>
    /// One routing mode's cross-node throughput alone, on a two-node cluster beside the same shape with no filtering
    /// (`bench cluster-throughput MODE ROUNDS`: for comparing datapath builds on one machine).
    /// </summary>
    public static IReadOnlyList<CrossNodeThroughputResult> Throughput(string routing, int rounds, int pings = SandboxBenchmark.PingsPerRun)
    {
        using var cluster = Up(2, routing);
        using var plain = PlainTopology.Create(tunnel: routing == "tunnel");
        return cluster.Throughput(pings, rounds, plain);
    }

    private static LocalClusterRun Up(int nodes, string routing, string hostRouting = "bpf")
    {
        var directory = Path.Combine(Path.GetTempPath(), $"mbbench-cluster-{routing}");
        if (ClusterCommands.Load(directory) is not null)
        {
            CliApp.Run(["cluster", "down", "--dir", directory], TextWriter.Null, Console.Error);
        }
        var code = CliApp.Run(["cluster", "up", "--nodes", $"{nodes}", "--routing-mode", routing, "--host-routing", hostRouting,
            "--lease-ttl", $"{Lease}", "--dir", directory], TextWriter.Null, Console.Error);
        if (code != 0)
        {
            throw new InvalidOperationException($"membrane cluster up failed ({code})");
        }
        return new LocalClusterRun(ClusterCommands.Load(directory)!);
    }

    /// <summary>
    /// Identity allocation and the store's size for 1,000 pods, on an etcd of their own (the store layer as nodes use it).
    /// </summary>
    private static async Task<(double Rate, int Allocated, ClusterStoreResult Store)> StoreAsync()
    {
        using var cluster = Up(1, "native");
        // The local cluster's etcd takes only its own CA's client certificates: the benchmark uses the CLI's.
        var pki = Path.Combine(cluster.File.Directory, "pki");
        using var etcd = EtcdConnection.FromOption(cluster.File.EtcdUrls, tls: new EtcdTls(Path.Combine(pki, "ca.pem"),
            Path.Combine(pki, "root.pem"), Path.Combine(pki, "root-key.pem")));
        var sessions = new List<NodeSession>();
        try
        {
            // Three nodes allocate 300 new label sets each at the same time.
            var allocators = new List<ClusterIdentities>();
            for (var n = 0; n < 3; n++)
            {
                var session = new NodeSession(etcd, TimeSpan.FromSeconds(60));
                await session.StartAsync().ConfigureAwait(false);
                sessions.Add(session);
                allocators.Add(new ClusterIdentities(etcd, $"bench-{n}", session));
            }
            var watch = Stopwatch.StartNew();
            await Task.WhenAll(allocators.Select((a, n) => Task.Run(async () =>
            {
                for (var i = 0; i < 300; i++)
                {
                    await a.AcquireAsync($"k8s:app=bench-{n}-{i}").ConfigureAwait(false);
                }
            }))).ConfigureAwait(false);
            var rate = 900 / watch.Elapsed.TotalSeconds;

            // 1,000 pods in 50 label sets on 3 nodes: objects, the ipcache (two addresses each), identities and their users.
            var before = await DatabaseBytesAsync(etcd).ConfigureAwait(false);
            var (keysBefore, bytesBefore) = await LogicalSizeAsync(etcd).ConfigureAwait(false);
            var objects = new ClusterObjects(etcd);
            var ipcaches = sessions.Select((s, n) => new ClusterIpCache(etcd, s, $"bench-{n}",
                IPAddress.Parse($"10.250.0.{n + 1}"))).ToList();
            for (var batch = 0; batch < 10; batch++)
            {
                var changes = Enumerable.Range(batch * 100, 100).Select(i => new KeyValuePair<string, string?>($"Pod/bench/pod-{i}",
                    $"apiVersion: v1\nkind: Pod\nmetadata:\n  name: pod-{i}\n  namespace: bench\n  labels:\n    app: app-{i % 50}\n" +
                    $"spec:\n  nodeName: bench-{i % 3}\n  containers:\n  - name: c\n    ports:\n    - containerPort: 80\n"))
                    .ToDictionary(c => c.Key, c => c.Value, StringComparer.Ordinal);
                await objects.CommitAsync(changes, new Dictionary<string, long>()).ConfigureAwait(false);
            }
            for (var i = 0; i < 1000; i++)
            {
                var node = i % 3;
                var identity = await allocators[node].AcquireAsync($"k8s:app=app-{i % 50};k8s:io.kubernetes.pod.namespace=bench")
                    .ConfigureAwait(false);
                await ipcaches[node].PublishAsync(IPAddress.Parse($"10.{101 + node}.{i / 250}.{i % 250 + 2}"), identity, $"bench/pod-{i}")
                    .ConfigureAwait(false);
                await ipcaches[node].PublishAsync(IPAddress.Parse($"fd00:{101 + node}::{i + 2:x}"), identity, $"bench/pod-{i}")
                    .ConfigureAwait(false);
            }
            var after = await DatabaseBytesAsync(etcd).ConfigureAwait(false);
            var (keysAfter, bytesAfter) = await LogicalSizeAsync(etcd).ConfigureAwait(false);
            return (rate, 900, new ClusterStoreResult(1000, keysAfter - keysBefore, bytesAfter - bytesBefore, before, after));
        }
        finally
        {
            foreach (var session in sessions)
            {
                await session.RevokeAsync().ConfigureAwait(false);
                await session.DisposeAsync().ConfigureAwait(false);
            }
        }
    }

    private static async Task<long> DatabaseBytesAsync(EtcdConnection etcd) =>
        (await etcd.Client.StatusAsync(new Etcdserverpb.StatusRequest(), new Grpc.Core.Metadata(), etcd.Deadline).ConfigureAwait(false))
        .DbSize;

    private static async Task<(int Keys, long Bytes)> LogicalSizeAsync(EtcdConnection etcd)
    {
        var (items, _) = await etcd.ListAsync("membrane/").ConfigureAwait(false);
        return (items.Count, items.Sum(kv => (long)kv.Key.Length + kv.Value.Length));
    }

    /// <summary>A running local cluster; down on dispose.</summary>
    private sealed class LocalClusterRun(LocalClusterFile file) : IDisposable
    {
        public LocalClusterFile File { get; } = file;

        private static async Task<T> Get<T>(string socket, string path, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> type)
        {
            using var client = new AgentClient(socket);
            return await client.Get(path, type).ConfigureAwait(false);
        }

        private string Socket(int node) => File.Nodes[node].Socket;

        /// <summary>Applies a client and a web pod on every node; returns each node's (client netns, web address).</summary>
        private async Task<List<(string Netns, IPAddress Web)>> PairsAsync(string policy)
        {
            var yaml = "apiVersion: v1\nkind: Namespace\nmetadata: {name: bench}\n" + string.Concat(File.Nodes.Select((n, i) =>
                $"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: client-{i}, namespace: bench, labels: {{app: client}}}}\n" +
                $"spec: {{nodeName: {n.Name}, containers: [{{name: c}}]}}\n" +
                $"---\napiVersion: v1\nkind: Pod\nmetadata: {{name: web-{i}, namespace: bench, labels: {{app: web}}}}\n" +
                $"spec: {{nodeName: {n.Name}, containers: [{{name: w}}]}}\n")) + "---\n" + policy;
            using (var client = new AgentClient(Socket(0)))
            {
                await client.Post("v1/apply", new ManifestRequest(yaml, "bench.yaml"), AgentJsonContext.Default.ManifestRequest,
                    AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
            }
            var pairs = new List<(string, IPAddress)>();
            for (var i = 0; i < File.Nodes.Count; i++)
            {
                var deadline = Stopwatch.StartNew();
                while (true)
                {
                    var endpoints = await Get(Socket(i), "v1/endpoints", AgentJsonContext.Default.ListEndpointOutput).ConfigureAwait(false);
                    var client = endpoints.FirstOrDefault(e => e.Pod == $"bench/client-{i}" && e.Id != 0);
                    var web = endpoints.FirstOrDefault(e => e.Pod == $"bench/web-{i}" && e.Id != 0);
                    if (client is not null && web is not null)
                    {
                        pairs.Add((client.Netns, IPAddress.Parse(web.IPv4!)));
                        break;
                    }
                    if (deadline.Elapsed > TimeSpan.FromSeconds(60))
                    {
                        throw new InvalidOperationException($"node {i} never ran its bench pods");
                    }
                    await Task.Delay(100).ConfigureAwait(false);
                }
            }
            return pairs;
        }

        private const string AllowFromClient = """
            apiVersion: cilium.io/v2
            kind: CiliumClusterwideNetworkPolicy
            metadata: {name: bench-flip}
            spec:
              endpointSelector: {matchLabels: {app: web}}
              ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
            """;

        private static string EchoPolicy(bool allow) => $$$"""
            apiVersion: cilium.io/v2
            kind: CiliumClusterwideNetworkPolicy
            metadata: {name: bench-flip}
            spec:
              endpointSelector: {matchLabels: {app: web}}
              ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: {{{(allow ? 8 : 13)}}}}]}]}]
            """;

        /// <summary>
        /// Flips a policy imported through node 1 between allowing and denying echo; after each import, real echo
        /// requests on every node (its own client → web pair) show when that node enforces it. The latency of a change
        /// is from the import's start until the last node shows the new verdict.
        /// </summary>
        public async Task<ClusterLatencyResult> PropagationAsync(int changes)
        {
            var pairs = await PairsAsync(EchoPolicy(true)).ConfigureAwait(false);
            var sockets = pairs.Select(p => NetworkNamespace.Run(p.Netns, () =>
            {
                var s = new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp);
                s.Bind(new IPEndPoint(IPAddress.Any, 0));
                s.ReceiveTimeout = 1;
                return s;
            })).ToList();
            var latencies = new List<double>();
            ushort sequence = 0;
            try
            {
                using var client = new AgentClient(Socket(0));
                for (var i = 0; i < changes + 1; i++)
                {
                    var allow = i % 2 == 1;
                    var watch = Stopwatch.StartNew();
                    await client.Post("v1/policies", new ManifestRequest(EchoPolicy(allow), "flip.yaml"),
                        AgentJsonContext.Default.ManifestRequest,
                        AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
                    var pending = Enumerable.Range(0, pairs.Count).ToHashSet();
                    while (pending.Count > 0)
                    {
                        foreach (var node in pending.ToList())
                        {
                            if (SandboxBenchmark.Echo(sockets[node], pairs[node].Web, ++sequence) == allow)
                            {
                                pending.Remove(node);
                            }
                        }
                        if (watch.Elapsed > TimeSpan.FromSeconds(30))
                        {
                            throw new InvalidOperationException("a node never enforced the change");
                        }
                    }
                    if (i > 0) // the first change warms the path up
                    {
                        latencies.Add(watch.Elapsed.TotalMilliseconds);
                    }
                }
            }
            finally
            {
                foreach (var socket in sockets)
                {
                    socket.Dispose();
                }
            }
            return new ClusterLatencyResult(pairs.Count, changes, SandboxBenchmark.Percentile(latencies, 50),
                SandboxBenchmark.Percentile(latencies, 99), latencies.Max());
        }

        /// <summary>
        /// Ping flood and TCP (iperf3) from node 1's client to web on node 1 and to web on node 2, in interleaved
        /// rounds: each round measures both with host routing and then on the legacy path (the HostRouting bit of every
        /// node's pinned configuration cleared, as <c>--host-routing legacy</c> leaves it); the ping floods in pairs
        /// (same-node, cross-node), one TCP pair. Ratios are medians of the pairs' ratios. One result per path.
        /// </summary>
        public List<CrossNodeThroughputResult> Throughput(int pings, int rounds, PlainTopology? plain = null)
        {
            var pairs = PairsAsync(AllowFromClient).GetAwaiter().GetResult();
            var (netns, same) = pairs[0];
            var cross = pairs[1].Web;
            var serverNetns = pairs.Select(p => WebNetns(p.Web)).ToList();
            if (plain is not null)
            {
                serverNetns.AddRange([plain.WebNetns(plain.SameNodeWeb), plain.WebNetns(plain.CrossNodeWeb)]);
            }
            var servers = serverNetns.Select(SandboxBenchmark.IperfServer).ToList();
            try
            {
                var (bpf, legacy, none) = (new Samples(), new Samples(), new Samples());
                SandboxBenchmark.PingFlood(netns, cross, 1000); // warm-up: neighbours, routes
                if (plain is not null)
                {
                    SandboxBenchmark.PingFlood(plain.ClientNetns, plain.CrossNodeWeb, 1000);
                }
                for (var round = 0; round < rounds; round++)
                {
                    // Odd rounds run the other way round (legacy first, cross-node first): neither path nor pod always
                    // measures first.
                    var odd = round % 2 == 1;
                    var order = odd ? new[] { legacy, bpf, none } : [none, bpf, legacy];
                    foreach (var samples in order.Where(s => s != none || plain is not null))
                    {
                        var on = samples == bpf;
                        var (client, sameTarget, crossTarget) = samples == none
                            ? (plain!.ClientNetns, plain.SameNodeWeb, plain.CrossNodeWeb) : (netns, same, cross);
                        if (samples != none)
                        {
                            SwitchHostRouting(on);
                        }
                        var targets = new[] { (sameTarget, samples.SamePings, samples.SameTcp),
                            (crossTarget, samples.CrossPings, samples.CrossTcp) };
                        if (odd)
                        {
                            Array.Reverse(targets);
                        }
                        // Ping floods in short pairs, the pair's order alternating: both runs of a pair see the same machine.
                        for (var pair = 0; pair < SandboxBenchmark.PairsPerRound; pair++)
                        {
                            foreach (var (target, rates, _) in pair % 2 == 0 ? targets : targets.AsEnumerable().Reverse())
                            {
                                rates.Add(SandboxBenchmark.PingFlood(client, target, pings));
                            }
                        }
                        foreach (var (target, _, rates) in targets)
                        {
                            rates.Add(SandboxBenchmark.Iperf(client, target, 3));
                        }
                        if (samples != none && File.Nodes.Any(n => HostRoutingBit(n) != on))
                        {
                            throw new InvalidOperationException("an agent rewrote its configuration during a measurement round");
                        }
                    }
                }
                SwitchHostRouting(on: true);
                var gain = SandboxBenchmark.Median(bpf.CrossPings.Zip(legacy.CrossPings, (b, l) => b / l).ToList());
                var results = new List<CrossNodeThroughputResult>
                {
                    bpf.Result(File.RoutingMode) with
                    {
                        CrossNodePingOverLegacy = gain,
                        CrossNodePingOverNoFiltering = plain is null ? null
                            : SandboxBenchmark.Median(bpf.CrossPings.Zip(none.CrossPings, (b, n) => b / n).ToList()),
                    },
                    legacy.Result($"{File.RoutingMode}, legacy host routing"),
                };
                if (plain is not null)
                {
                    results.Add(none.Result($"{File.RoutingMode}, no filtering: the same shape without Membrane"));
                }
                return results;
            }
            finally
            {
                foreach (var server in servers)
                {
                    server.Kill();
                    server.WaitForExit();
                    server.Dispose();
                }
            }
        }

        private sealed class Samples
        {
            public List<double> SamePings { get; } = [];
            public List<double> CrossPings { get; } = [];
            public List<double> SameTcp { get; } = [];
            public List<double> CrossTcp { get; } = [];

            public CrossNodeThroughputResult Result(string routing) => new(routing, SandboxBenchmark.Median(SamePings),
                SandboxBenchmark.Median(CrossPings), SandboxBenchmark.Median(SamePings.Zip(CrossPings, (s, c) => c / s).ToList()),
                SandboxBenchmark.Median(SameTcp), SandboxBenchmark.Median(CrossTcp),
                SandboxBenchmark.Median(SameTcp.Zip(CrossTcp, (s, c) => c / s).ToList()));
        }

        /// <summary>
        /// Host routing on or off on every node, in the kernel only: the HostRouting bit of each node's pinned mb_config
        /// (an agent writes it again on its next change; none comes during the rounds, which check the bit after).
        /// </summary>
        private void SwitchHostRouting(bool on)
        {
            foreach (var node in File.Nodes)
            {
                var pin = Path.Combine(node.PinDirectory, "mb_config");
                var value = ConfigBytes(pin);
                value[0] = (byte)(on ? value[0] | DatapathConfig.HostRouting : value[0] & ~DatapathConfig.HostRouting);
                Ip.Exec("bpftool", ["map", "update", "pinned", pin, "key", "0", "0", "0", "0", "value",
                    .. value.Select(b => b.ToString(System.Globalization.CultureInfo.InvariantCulture))], null);
            }
        }

        private static bool HostRoutingBit(LocalClusterNode node) =>
            (ConfigBytes(Path.Combine(node.PinDirectory, "mb_config"))[0] & DatapathConfig.HostRouting) != 0;

        private static byte[] ConfigBytes(string pin)
        {
            var json = Ip.Exec("bpftool", ["-j", "map", "lookup", "pinned", pin, "key", "0", "0", "0", "0"], null);
            using var document = JsonDocument.Parse(json);
            return document.RootElement.GetProperty("value").EnumerateArray().Select(b => Convert.ToByte(b.GetString(), 16)).ToArray();
        }

        private string WebNetns(IPAddress web)
        {
            foreach (var node in File.Nodes)
            {
                var endpoints = Get(node.Socket, "v1/endpoints", AgentJsonContext.Default.ListEndpointOutput).GetAwaiter().GetResult();
                if (endpoints.FirstOrDefault(e => e.Id != 0 && e.IPv4 == web.ToString()) is { } e)
                {
                    return e.Netns;
                }
            }
            throw new InvalidOperationException($"no pod has {web}");
        }

        /// <summary>
        /// Two of three etcd members killed for longer than the nodes' leases, then started again: the time until
        /// every node is healthy and holds every other node's pod addresses again.
        /// </summary>
        public async Task<double> QuorumRecoveryAsync()
        {
            var expected = new List<int>();
            foreach (var node in File.Nodes)
            {
                expected.Add((await Get(node.Socket, "v1/status", AgentJsonContext.Default.StatusResponse).ConfigureAwait(false))
                    .Cluster!.RemoteEndpoints);
            }
            var killed = File.Etcd.Take(2).Select(m => (m, CommandLine(m.Pid))).ToList();
            foreach (var (member, _) in killed)
            {
                using var process = Process.GetProcessById(member.Pid);
                process.Kill();
                process.WaitForExit(5000);
            }
            await Task.Delay(TimeSpan.FromSeconds(Lease + 2)).ConfigureAwait(false);
            var watch = Stopwatch.StartNew();
            foreach (var (_, argv) in killed)
            {
                Process.Start(new ProcessStartInfo("sh", ["-c", "setsid \"$@\" >/dev/null 2>&1 </dev/null &", "sh",
                    .. argv]))!.WaitForExit();
            }
            while (true)
            {
                var healthy = true;
                for (var i = 0; i < File.Nodes.Count && healthy; i++)
                {
                    var cluster = (await Get(File.Nodes[i].Socket, "v1/status",
                        AgentJsonContext.Default.StatusResponse).ConfigureAwait(false))
                        .Cluster!;
                    healthy = cluster.Health == "ok" && cluster.RemoteEndpoints == expected[i];
                }
                if (healthy)
                {
                    return watch.Elapsed.TotalSeconds;
                }
                if (watch.Elapsed > TimeSpan.FromSeconds(60))
                {
                    throw new InvalidOperationException("the cluster did not recover within 60 s of quorum returning");
                }
                await Task.Delay(50).ConfigureAwait(false);
            }
        }

        private static string[] CommandLine(int pid) =>
            System.IO.File.ReadAllText($"/proc/{pid}/cmdline").Split('\0', StringSplitOptions.RemoveEmptyEntries);

        public void Dispose() => CliApp.Run(["cluster", "down", "--dir", File.Directory], TextWriter.Null, Console.Error);
    }

    public static string Format(ClusterReport r) => JsonSerializer.Serialize(r, ReportJsonContext.Default.ClusterReport);
}
