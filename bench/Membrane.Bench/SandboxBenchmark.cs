using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.RegularExpressions;
using Membrane.Agent;
using Membrane.Agent.Http;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Cli;
using Membrane.Datapath.Ebpf;

namespace Membrane.Bench;

public sealed record ThroughputResult(string Scenario, double PingPerSecond, double PingRatio, double TcpMegabytesPerSecond,
    double TcpRatio, double PingSpread, double TcpSpread);

public sealed record LatencyResult(int Changes, double ImportP50, double ImportP99, double EnforcedAfterReturnP50,
    double EnforcedAfterReturnP99, int NotYetEnforcedAtReturn);

/// <summary>
/// Measurements on a real sandbox: an agent of its own (prefix mbbench), two pods, ping floods and TCP bulk
/// transfers between them (namespaces on this machine only), policy changes through the API socket.
/// </summary>
public sealed partial class SandboxBenchmark : IAsyncDisposable
{
    /// <summary>One iperf3 run between the sandbox's pods: 1 s was mostly slow start, and its rounds' TCP ratios spread ±0.4.</summary>
    public const int TcpSeconds = 2;

    private const string Prefix = "mbbench";
    private readonly AgentService _agent;
    private readonly CancellationTokenSource _stop = new();
    private readonly Task _host;
    private readonly string _state = Path.Combine(Path.GetTempPath(), "mbbench-state");

    private SandboxBenchmark()
    {
        Cleanup();
        _agent = AgentService.Start(new AgentOptions
        {
            StateDirectory = _state,
            NamePrefix = Prefix,
            PinDirectory = $"/sys/fs/bpf/{Prefix}"
        });
        _host = ApiServer.RunAsync(_agent, _stop.Token);
    }

    public static async Task<SandboxBenchmark> StartAsync()
    {
        var bench = new SandboxBenchmark();
        for (var i = 0; i < 100 && !File.Exists(bench._agent.Options.SocketPath); i++)
        {
            await Task.Delay(50).ConfigureAwait(false);
        }
        await bench._agent.Objects.ApplyAsync(new ManifestRequest("""
            apiVersion: v1
            kind: Namespace
            metadata: {name: bench}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: a, namespace: bench, labels: {app: a}}
            spec: {containers: [{name: c}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: b, namespace: bench, labels: {app: b}}
            spec: {containers: [{name: c, ports: [{containerPort: 80}]}]}
            """, "bench.yaml")).ConfigureAwait(false);
        return bench;
    }

    private (string Netns, IPAddress Address, string Interface, int IfIndex) Pod(string key)
    {
        var (record, endpoint) = _agent.Pod(key)!.Value;
        return (record.Netns, endpoint.Address(AddressFamily.InterNetwork)!, record.HostInterface, record.IfIndex);
    }

    /// <summary>An ingress policy for b: echo and TCP 80 from a, then rules-2 deny rules that never match.</summary>
    public static string MembranePolicy(int rules)
    {
        var text = new StringBuilder("""
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: bench, namespace: bench}
            spec:
              endpointSelector: {matchLabels: {app: b}}
              ingress:
              - fromEndpoints: [{matchLabels: {app: a}}]
                toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "5201", protocol: TCP}]}]
              - fromEndpoints: [{matchLabels: {app: a}}]
                icmps: [{fields: [{type: 8}]}]

            """);
        if (rules > 2)
        {
            text.Append("  ingressDeny:\n");
            for (var i = 0; i < rules - 2; i++)
            {
                text.Append(CultureInfo.InvariantCulture,
                    $"  - {{fromCIDR: [198.18.{i / 250}.{i % 250 + 1}/32], toPorts: [{{ports: [{{port: \"{10000 + i}\", protocol: " +
                    $"TCP}}]}}]}}\n");
            }
        }
        return text.ToString();
    }

    private string NftablesRules(int rules, IPAddress b)
    {
        var text = new StringBuilder($"table inet mbbench {{\n  chain forward {{\n    type filter hook forward priority 0; policy " +
            $"accept;\n");
        for (var i = 0; i < rules - 2; i++)
        {
            text.Append(CultureInfo.InvariantCulture,
                $"    ip saddr 198.18.{i / 250}.{i % 250 + 1} ip daddr {b} tcp dport {10000 + i} drop\n");
        }
        text.Append(CultureInfo.InvariantCulture,
            $"    ip daddr {b} icmp type echo-request accept\n    ip daddr {b} tcp dport 80 accept\n  }}\n}}\n");
        return text.ToString();
    }

    /// <summary>
    /// Interleaved rounds: each round measures every variant back to back (no hook first), and a variant's ratio is the
    /// median over rounds of its ratio to the same round's no-hook figure, so drift of the machine between rounds cancels.
    /// Variants: no hook; the empty program on the same four hooks (tcx, then clsact): the hook's own cost; Membrane with
    /// 10, 1,000 and 5,000 rules on tcx links, and with 5,000 on clsact; nftables with the same rules, linear.
    /// </summary>
    public async Task<IReadOnlyList<ThroughputResult>> ThroughputAsync(int pings, int rounds)
    {
        var a = Pod("bench/a");
        var b = Pod("bench/b");
        var node = _agent.Options.NodeNamespace;
        var datapath = _agent.Datapath;
        using var floor = BpfObject.Load(Path.Combine(BpfObject.ObjectDirectory, "floor.o"));
        var empty = floor.Program("pass_all");
        var tcx = new DeviceHooks(AttachMode.Tcx, Path.Combine(_agent.Options.PinDirectory, "bench-links"));
        var clsact = new DeviceHooks(AttachMode.Clsact, Path.Combine(_agent.Options.PinDirectory, "bench-links"));
        void Hook(DeviceHooks? hooks, BpfProgram? ingress, BpfProgram? egress) => NetworkNamespace.Run(node, () =>
        {
            foreach (var pod in new[] { a, b })
            {
                datapath.Hooks.Detach(pod.IfIndex, TcDirection.Ingress);
                datapath.Hooks.Detach(pod.IfIndex, TcDirection.Egress);
                tcx.Detach(pod.IfIndex, TcDirection.Ingress);
                tcx.Detach(pod.IfIndex, TcDirection.Egress);
                if (hooks?.Mode != AttachMode.Clsact)
                {
                    try
                    {
                        // No clsact qdisc either: an empty one still costs its hook.
                        Ip.Exec("ip", ["netns", "exec", node, "tc", "qdisc", "del", "dev", pod.Interface, "clsact"], null);
                    }
                    catch (InvalidOperationException)
                    {
                    }
                }
                if (hooks is not null)
                {
                    hooks.Attach(pod.IfIndex, TcDirection.Ingress, ingress!);
                    hooks.Attach(pod.IfIndex, TcDirection.Egress, egress!);
                }
            }
        });
        async Task Policy(int rules)
        {
            if (rules == 0)
            {
                await _agent.Objects.DeletePoliciesAsync(null, all: true).ConfigureAwait(false);
            }
            else
            {
                await _agent.Objects.ApplyAsync(new ManifestRequest(MembranePolicy(rules), "bench-policy.yaml"), policiesOnly: true)
                    .ConfigureAwait(false);
            }
        }
        void Nftables(int rules)
        {
            try
            {
                Ip.Exec("ip", ["netns", "exec", node, "nft", "delete", "table", "inet", "mbbench"], null);
            }
            catch (InvalidOperationException)
            {
            }
            if (rules > 0)
            {
                var file = Path.Combine(Path.GetTempPath(), "mbbench.nft");
                File.WriteAllText(file, NftablesRules(rules, b.Address));
                Ip.Exec("ip", ["netns", "exec", node, "nft", "-f", file], null);
                File.Delete(file); // loaded: the benchmark leaves nothing in /tmp
            }
        }
        var variants = new List<(string Name, Func<Task> Setup)>
        {
            ("no hook (no eBPF, no nftables)", () => { Hook(null, null, null); return Task.CompletedTask; }),
            ("empty program, tcx", () => { Hook(tcx, empty, empty); return Task.CompletedTask; }),
            ("empty program, clsact", () => { Hook(clsact, empty, empty); return Task.CompletedTask; }),
        };
        // Membrane as the agent runs it by default (tcx, host routing), then the legacy path (every packet forwarded by
        // the node, the destination's policy judged on its veth) and clsact beside it.
        Func<Task> Membrane(int rules, DeviceHooks hooks, bool hostRouting) => async () =>
        {
            Hook(hooks, datapath.FromPod, datapath.ToPod);
            datapath.SetHostRouting(hostRouting);
            await Policy(rules).ConfigureAwait(false);
        };
        foreach (var rules in new[] { 10, 1000, 5000 })
        {
            variants.Add(($"Membrane, {rules:N0} rules", Membrane(rules, tcx, hostRouting: true)));
        }
        variants.Add(("Membrane, 5,000 rules, legacy routing", Membrane(5000, tcx, hostRouting: false)));
        variants.Add(("Membrane, 5,000 rules, legacy routing, clsact", Membrane(5000, clsact, hostRouting: false)));
        foreach (var rules in new[] { 10, 1000, 5000 })
        {
            variants.Add(($"nftables, {rules:N0} linear rules", () =>
            {
                Hook(null, null, null);
                Nftables(rules);
                return Task.CompletedTask;
            }
            ));
        }

        // An iperf3 server in pod b for the TCP measurements (standard tool, no JIT warming up underneath).
        using var iperfServer = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", b.Netns, "iperf3", "-s", "-p",
            "5201"])
        { RedirectStandardOutput = true, UseShellExecute = false })!;
        Thread.Sleep(300);
        PingFlood(a.Netns, b.Address, pings);
        Iperf(a.Netns, b.Address, seconds: 1); // warm-up
        var ping = variants.ToDictionary(v => v.Name, _ => new List<double>());
        var tcp = variants.ToDictionary(v => v.Name, _ => new List<double>());
        try
        {
            for (var round = 0; round < rounds; round++)
            {
                // Each round starts one variant later: no variant, the baseline included, always takes the same place in
                // a round (the first measurement after the previous round's last, or after the warm-up).
                foreach (var (name, setup) in variants.Skip(round % variants.Count).Concat(variants.Take(round % variants.Count)))
                {
                    await setup().ConfigureAwait(false);
                    ping[name].Add(PingFlood(a.Netns, b.Address, pings));
                    tcp[name].Add(Iperf(a.Netns, b.Address, TcpSeconds));
                    if (!name.StartsWith("nftables", StringComparison.Ordinal))
                    {
                        continue;
                    }
                    Nftables(0);
                }
                Console.Error.WriteLine($"  round {round + 1}/{rounds}: " + string.Join(", ", variants.Skip(1).Select(v =>
                    $"{v.Name} {ping[v.Name][round] / ping[variants[0].Name][round]:F2}")));
            }
        }
        finally
        {
            iperfServer.Kill();
            Nftables(0);
            await Policy(0).ConfigureAwait(false);
            Hook(datapath.Hooks, datapath.FromPod, datapath.ToPod);
            datapath.SetHostRouting(_agent.Options.HostRouting == HostRouting.Bpf);
        }
        var baseline = variants[0].Name;
        ThroughputResult Result(string name)
        {
            var pingRatios = ping[name].Zip(ping[baseline], (v, b) => v / b).ToList();
            var tcpRatios = tcp[name].Zip(tcp[baseline], (v, b) => v / b).ToList();
            // Spread: half the range of the same-round ratios — how far apart the rounds' answers lie.
            return new ThroughputResult(name, Median(ping[name]), Median(pingRatios), Median(tcp[name]), Median(tcpRatios),
                (pingRatios.Max() - pingRatios.Min()) / 2, (tcpRatios.Max() - tcpRatios.Min()) / 2);
        }
        return variants.Select(v => Result(v.Name)).ToList();
    }

    [GeneratedRegex(@"(\d+) received.*time (\d+)ms")]
    private static partial Regex PingSummary();

    internal static double PingFlood(string netns, IPAddress target, int count)
    {
        // Pinned to the second CPU: the flood (and its softirq work) does not share a core with this process.
        var output = Ip.Exec("taskset", ["-c", $"{Environment.ProcessorCount - 1}", "ip", "netns", "exec", netns, "ping", "-f", "-q", "-c",
            $"{count}", "-W", "1", "-w", "60", target.ToString()], null);
        var m = PingSummary().Match(output);
        if (!m.Success)
        {
            throw new InvalidOperationException($"unexpected ping output: {output}");
        }
        var received = double.Parse(m.Groups[1].Value, CultureInfo.InvariantCulture);
        if (received < count * 0.99)
        {
            throw new InvalidOperationException($"ping flood lost packets ({received} of {count}): the policy should allow it");
        }
        return received / (double.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture) / 1000);
    }

    /// <summary>TCP throughput in MiB/s from iperf3 (a client in one pod, the server in the other).</summary>
    internal static double Iperf(string netns, IPAddress target, int seconds)
    {
        var json = Ip.Exec("taskset", ["-c", $"{Environment.ProcessorCount - 1}", "ip", "netns", "exec", netns, "iperf3", "-c",
            target.ToString(), "-p", "5201", "-t", $"{seconds}", "-J"], null);
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        return doc.RootElement.GetProperty("end").GetProperty("sum_received").GetProperty("bits_per_second").GetDouble() / 8 / 1048576;
    }

    /// <summary>
    /// Flips a policy between allowing and denying a's echo requests through the API socket, and after each
    /// import returns, probes with real echo requests until the new verdict shows.
    /// </summary>
    public async Task<LatencyResult> ImportToEnforcedAsync(int changes)
    {
        var a = Pod("bench/a");
        var b = Pod("bench/b");
        using var client = new AgentClient(_agent.Options.SocketPath);
        var import = new List<double>();
        var after = new List<double>();
        var late = 0;
        using var socket = NetworkNamespace.Run(a.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp));
        socket.Bind(new IPEndPoint(IPAddress.Any, 0));
        socket.ReceiveTimeout = 1;
        ushort sequence = 0;
        // One unmeasured import first: the first request through the API pays for JIT compilation.
        await client.Post("v1/policies", new ManifestRequest(MembranePolicy(2), "warm-up.yaml"), AgentJsonContext.Default.ManifestRequest,
            AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
        for (var i = 0; i < changes; i++)
        {
            var allow = i % 2 == 0;
            var policy = allow ? MembranePolicy(2) : MembranePolicy(2).Replace("icmps: [{fields: [{type: 8}]}]",
                "icmps: [{fields: [{type: 13}]}]", StringComparison.Ordinal);
            var watch = Stopwatch.StartNew();
            await client.Post("v1/policies", new ManifestRequest(policy, "flip.yaml"), AgentJsonContext.Default.ManifestRequest,
                AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
            import.Add(watch.Elapsed.TotalMilliseconds);
            var returned = Stopwatch.StartNew();
            var first = true;
            while (true)
            {
                var sentAt = returned.Elapsed.TotalMilliseconds;
                var replied = Echo(socket, b.Address, ++sequence);
                if (replied == allow)
                {
                    after.Add(sentAt);
                    break;
                }
                if (first)
                {
                    late++;
                    first = false;
                }
                if (returned.Elapsed > TimeSpan.FromSeconds(5))
                {
                    throw new InvalidOperationException("the new verdict never showed");
                }
            }
        }
        await _agent.Objects.DeletePoliciesAsync(null, all: true).ConfigureAwait(false);
        return new LatencyResult(changes, Percentile(import, 50), Percentile(import, 99), Percentile(after, 50), Percentile(after, 99),
            late);
    }

    /// <summary>One echo request; true when its reply arrives within 20 ms.</summary>
    internal static bool Echo(Socket socket, IPAddress target, ushort sequence)
    {
        var packet = new byte[16];
        packet[0] = 8;
        packet[4] = 0x4d;
        packet[5] = 0x42;
        packet[6] = (byte)(sequence >> 8);
        packet[7] = (byte)sequence;
        uint sum = 0;
        for (var i = 0; i < packet.Length; i += 2)
        {
            sum += (uint)(packet[i] << 8 | packet[i + 1]);
        }
        sum = (sum & 0xffff) + (sum >> 16);
        sum += sum >> 16;
        packet[2] = (byte)(~sum >> 8);
        packet[3] = (byte)~sum;
        socket.SendTo(packet, new IPEndPoint(target, 0));
        var buffer = new byte[256];
        var deadline = Stopwatch.StartNew();
        while (deadline.ElapsedMilliseconds < 20)
        {
            try
            {
                var n = socket.Receive(buffer);
                var ihl = (buffer[0] & 0x0f) * 4;
                if (n >= ihl + 8 && buffer[ihl] == 0 && buffer[ihl + 6] == (byte)(sequence >> 8) && buffer[ihl + 7] == (byte)sequence)
                {
                    return true;
                }
            }
            catch (SocketException)
            {
            }
        }
        return false;
    }

    public static double Median(List<double> values) => Percentile(values, 50);

    public static double Percentile(List<double> values, double p)
    {
        var sorted = values.Order().ToArray();
        var rank = (int)Math.Ceiling(p / 100 * sorted.Length) - 1;
        return sorted[Math.Clamp(rank, 0, sorted.Length - 1)];
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
        foreach (var pid in new PodServers(new AgentOptions { NamePrefix = Prefix }).Find(null))
        {
            try
            {
                Process.GetProcessById(pid).Kill();
            }
            catch (ArgumentException)
            {
            }
        }
        if (Directory.Exists($"/sys/fs/bpf/{Prefix}"))
        {
            Directory.Delete($"/sys/fs/bpf/{Prefix}", recursive: true);
        }
        if (Directory.Exists(_state))
        {
            Directory.Delete(_state, recursive: true);
        }
    }

    public async ValueTask DisposeAsync()
    {
        try
        {
            await _agent.Objects.ResetAsync().ConfigureAwait(false);
        }
        finally
        {
            await _stop.CancelAsync().ConfigureAwait(false);
            await _host.ConfigureAwait(false);
            _agent.Dispose();
            _stop.Dispose();
            Cleanup();
        }
    }
}
