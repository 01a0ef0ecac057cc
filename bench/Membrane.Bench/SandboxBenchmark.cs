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

/// <summary>
/// A variant's median rates, and its median ratios to the no-hook runs paired with its runs, each with its 95 % interval.
/// </summary>
public sealed record ThroughputResult(string Scenario, double PingPerSecond, double PingRatio, Interval PingInterval,
    double TcpMegabytesPerSecond, double TcpRatio, Interval TcpInterval, ProgramTime? Programs = null);

/// <summary>What a variant's eBPF programs took on the real path, per ping round trip (medians over the rounds).</summary>
public sealed record ProgramTime(double Nanoseconds, double Runs);

/// <summary>A confidence interval (95 %) of a median.</summary>
public readonly record struct Interval(double Low, double High);

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

    /// <summary>
    /// An iperf3 server in a pod's namespace. Its report of every test is read and dropped: unread, it fills the pipe after
    /// a hundred or so tests, and the server then blocks in the middle of a test and with it the next client.
    /// </summary>
    internal static Process IperfServer(string netns)
    {
        var server = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", netns, "iperf3", "-s", "-p", "5201"])
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false })!;
        server.BeginOutputReadLine();
        server.BeginErrorReadLine();
        return server;
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
