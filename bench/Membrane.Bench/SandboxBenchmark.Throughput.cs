using System.Net;
using System.Net.Sockets;
using Membrane.Agent;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;

namespace Membrane.Bench;

/// <summary>The sandbox's throughput: variants measured in pairs with runs that have everything switched off.</summary>
public sealed partial class SandboxBenchmark
{
    /// <summary>
    /// Interleaved rounds of pairs: in each round every variant in turn runs <see cref="PairsPerRound"/> ping floods and one
    /// TCP transfer, each beside a run of the same length with everything switched off (no hook), in alternating order. A
    /// variant's ratio is the median of its pairs' ratios: the machine's drift and its bursts, which moved whole rounds'
    /// answers by ±30 %, fall on both runs of a pair. Variants: the empty program on the same four hooks (tcx, then clsact):
    /// the hook's own cost; Membrane with 10, 1,000 and 5,000 rules on tcx links with host routing, with 5,000 on the legacy
    /// path (tcx and clsact); nftables with the same rules, linear.
    /// </summary>
    public async Task<IReadOnlyList<ThroughputResult>> ThroughputAsync(int pings, int rounds, IReadOnlyCollection<string>? only = null)
    {
        var a = Pod("bench/a");
        var b = Pod("bench/b");
        var node = _agent.Options.NodeNamespace;
        var datapath = _agent.Datapath;
        using var floor = BpfObject.Load(Path.Combine(BpfObject.ObjectDirectory, "floor.o"));
        var empty = floor.Program("pass_all");
        var bare = floor.Program("redirect_peer_only");
        var bareRoutes = floor.Map<uint, LocalDeliveryValue>("bare_routes");
        foreach (var (address, value) in datapath.LocalDelivery.Entries().Where(e => e.Address.AddressFamily == AddressFamily.InterNetwork))
        {
            bareRoutes.Update(BitConverter.ToUInt32(address.GetAddressBytes()), value);
        }
        var tcx = new DeviceHooks(AttachMode.Tcx, Path.Combine(_agent.Options.PinDirectory, "bench-links"));
        var clsact = new DeviceHooks(AttachMode.Clsact, Path.Combine(_agent.Options.PinDirectory, "bench-links"));
        // What may be in place, so that switching everything off between two runs spawns no tool for nothing.
        var clsactUp = true; // the agent's own hooks may have left the qdisc
        var nftablesUp = true;
        void Hook(DeviceHooks? hooks, BpfProgram? ingress, BpfProgram? egress) => NetworkNamespace.Run(node, () =>
        {
            var removeClsact = hooks?.Mode != AttachMode.Clsact && clsactUp;
            foreach (var pod in new[] { a, b })
            {
                datapath.Hooks.Detach(pod.IfIndex, TcDirection.Ingress);
                datapath.Hooks.Detach(pod.IfIndex, TcDirection.Egress);
                tcx.Detach(pod.IfIndex, TcDirection.Ingress);
                tcx.Detach(pod.IfIndex, TcDirection.Egress);
                if (removeClsact)
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
            clsactUp = hooks?.Mode == AttachMode.Clsact || (clsactUp && !removeClsact);
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
                if (nftablesUp)
                {
                    Ip.Exec("ip", ["netns", "exec", node, "nft", "delete", "table", "inet", "mbbench"], null);
                }
            }
            catch (InvalidOperationException)
            {
            }
            nftablesUp = rules > 0;
            if (rules > 0)
            {
                var file = Path.Combine(Path.GetTempPath(), "mbbench.nft");
                File.WriteAllText(file, NftablesRules(rules, b.Address));
                Ip.Exec("ip", ["netns", "exec", node, "nft", "-f", file], null);
                File.Delete(file); // loaded: the benchmark leaves nothing in /tmp
            }
        }
        void Unhook()
        {
            Hook(null, null, null);
            Nftables(0);
        }
        // Each variant: what it needs once (a policy, the routing), then what switches it on; switched off, every variant is
        // the no-hook baseline (no program, no qdisc, no nftables table), whatever policy the agent holds.
        var variants = new List<(string Name, Func<Task> Prepare, Action Attach, BpfProgram[] Programs)>
        {
            ("empty program, tcx", () => Task.CompletedTask, () => Hook(tcx, empty, empty), [empty]),
            ("empty program, clsact", () => Task.CompletedTask, () => Hook(clsact, empty, empty), [empty]),
            (BareShortcut, () => Task.CompletedTask, () => Hook(tcx, bare, empty), [bare, empty]),
        };
        // Membrane as the agent runs it by default (tcx, host routing), then the legacy path (every packet forwarded by
        // the node, the destination's policy judged on its veth) and clsact beside it.
        (string, Func<Task>, Action, BpfProgram[]) Membrane(string name, int rules, DeviceHooks hooks, bool hostRouting) => (name,
            async () =>
            {
                datapath.SetHostRouting(hostRouting);
                await Policy(rules).ConfigureAwait(false);
            }, () => Hook(hooks, datapath.FromPod, datapath.ToPod), [datapath.FromPod, datapath.ToPod]);
        foreach (var rules in new[] { 10, 1000, 5000 })
        {
            variants.Add(Membrane($"Membrane, {rules:N0} rules", rules, tcx, hostRouting: true));
        }
        variants.Add(Membrane("Membrane, 5,000 rules, legacy routing", 5000, tcx, hostRouting: false));
        variants.Add(Membrane("Membrane, 5,000 rules, legacy routing, clsact", 5000, clsact, hostRouting: false));
        foreach (var rules in new[] { 10, 1000, 5000 })
        {
            variants.Add(($"nftables, {rules:N0} linear rules", () => Task.CompletedTask, () => Nftables(rules), []));
        }

        if (only is { Count: > 0 })
        {
            variants.RemoveAll(v => !only.Any(word => v.Name.Contains(word, StringComparison.OrdinalIgnoreCase)));
        }

        // An iperf3 server in pod b for the TCP measurements (standard tool, no JIT warming up underneath).
        using var iperfServer = IperfServer(b.Netns);
        Thread.Sleep(300);
        PingFlood(a.Netns, b.Address, pings);
        Iperf(a.Netns, b.Address, seconds: 1); // warm-up
        const string baseline = "no hook (no eBPF, no nftables)";
        var samples = variants.Select(v => v.Name).Append(baseline).ToDictionary(name => name, _ => new Samples());
        var programTime = variants.ToDictionary(v => v.Name, _ => new List<(double Nanoseconds, double Runs)>());
        try
        {
            for (var round = 0; round < rounds; round++)
            {
                // Each round starts one variant later, so that no variant always follows the same one.
                foreach (var (name, prepare, attach, programs) in variants.Skip(round % variants.Count)
                    .Concat(variants.Take(round % variants.Count)))
                {
                    Unhook();
                    await prepare().ConfigureAwait(false);
                    // The agent runs in this process: what a large policy left for the collector is collected now, not
                    // during a run; then one run of each kind, not counted, warms the path.
                    GC.Collect(GC.MaxGeneration, GCCollectionMode.Forced, blocking: true, compacting: true);
                    GC.WaitForPendingFinalizers();
                    attach();
                    // As many echo requests as take RunSeconds at the variant's rate, at most `pings`: long enough that
                    // ping's whole-millisecond time stays under a percent, short enough for nftables' long chains.
                    var count = (int)Math.Clamp(PingFlood(a.Netns, b.Address, pings) * RunSeconds, MinimumPingsPerRun, pings);
                    // Pairs, each a run switched off beside a run switched on, in alternating order (off-on, on-off): the
                    // machine's drift and its bursts fall on both sides of a pair alike.
                    void Pairs(int count, Func<double> run, Action<Samples, double, double> add)
                    {
                        for (var pair = 0; pair < count; pair++)
                        {
                            var onFirst = pair % 2 == 1;
                            var first = Measure(onFirst, run);
                            var second = Measure(!onFirst, run);
                            var (on, off) = onFirst ? (first, second) : (second, first);
                            add(samples[name], on, off);
                            add(samples[baseline], off, off);
                        }
                    }
                    double Measure(bool on, Func<double> run)
                    {
                        if (on)
                        {
                            attach();
                        }
                        else
                        {
                            Unhook();
                        }
                        return run();
                    }
                    Pairs(PairsPerRound, () => PingFlood(a.Netns, b.Address, count), (s, on, off) => s.AddPing(on, off));
                    Pairs(TcpPairsPerRound, () => Iperf(a.Netns, b.Address, TcpSeconds), (s, on, off) => s.AddTcp(on, off));
                    if (programs.Length > 0)
                    {
                        // Then one run with the kernel's run statistics on (never during the pairs: they cost every
                        // program two clock reads a run): what the variant's programs took per round trip where they run.
                        attach();
                        programTime[name].Add(MeasureProgramTime(programs.Distinct().ToArray(),
                            () => PingFlood(a.Netns, b.Address, count), count));
                    }
                    Unhook();
                }
                Console.Error.WriteLine($"  round {round + 1}/{rounds}: " + string.Join(", ", variants.Select(v =>
                    $"{v.Name} {Median(samples[v.Name].PingRatios):F2}")));
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
        return samples.Keys.Where(k => k == baseline).Concat(variants.Select(v => v.Name)).Select(name =>
        {
            var s = samples[name];
            var time = programTime.GetValueOrDefault(name);
            return new ThroughputResult(name, Median(s.Ping), Median(s.PingRatios), MedianInterval(s.PingRatios), Median(s.Tcp),
                Median(s.TcpRatios), MedianInterval(s.TcpRatios),
                time is { Count: > 0 }
                    ? new ProgramTime(Median(time.Select(t => t.Nanoseconds).ToList()), Median(time.Select(t => t.Runs).ToList()))
                    : null);
        }).ToList();
    }

    /// <summary>
    /// The cheapest shortcut there is, on the same tcx hooks: one lookup, the frame's addresses, <c>bpf_redirect_peer</c>;
    /// no policy, no TTL. The ceiling of what host routing can reach on this machine.
    /// </summary>
    public const string BareShortcut = "bare redirect_peer (no policy: the ceiling)";

    /// <summary>
    /// The kernel's own account of <paramref name="programs"/> (BPF_ENABLE_STATS) over <paramref name="run"/>, per round
    /// trip of its <paramref name="roundTrips"/>: nanoseconds inside the programs and how many runs.
    /// </summary>
    private static (double Nanoseconds, double Runs) MeasureProgramTime(BpfProgram[] programs, Action run, int roundTrips)
    {
        using var statistics = RunStatistics.Enable();
        var before = programs.Select(p => p.RunTotals).ToArray();
        run();
        var after = programs.Select(p => p.RunTotals).ToArray();
        var nanoseconds = after.Zip(before, (x, y) => (double)(x.Nanoseconds - y.Nanoseconds)).Sum();
        var runs = after.Zip(before, (x, y) => (double)(x.Runs - y.Runs)).Sum();
        return (nanoseconds / roundTrips, runs / roundTrips);
    }

    /// <summary>Ping-flood pairs per variant and round.</summary>
    public const int PairsPerRound = 10;

    /// <summary>TCP pairs per variant and round: off-on, then on-off.</summary>
    public const int TcpPairsPerRound = 2;

    /// <summary>
    /// Echo requests per ping-flood run, at most: about 0.2 s on this machine without a hook, long enough that ping's
    /// whole-millisecond time moves a ratio by less than a percent (5,000 took 40 ms: 2.5 % a step), short enough for both
    /// runs of a pair to see the same machine.
    /// </summary>
    public const int PingsPerRun = 20_000;

    /// <summary>A run's length at the variant's rate, when <see cref="PingsPerRun"/> would take longer (nftables' chains).</summary>
    public const double RunSeconds = 0.25;

    /// <summary>The fewest echo requests a run sends.</summary>
    public const int MinimumPingsPerRun = 1_000;

    /// <summary>A variant's runs and, pair by pair, their ratios to the no-hook run beside them.</summary>
    private sealed class Samples
    {
        public List<double> Ping { get; } = [];
        public List<double> PingRatios { get; } = [];
        public List<double> Tcp { get; } = [];
        public List<double> TcpRatios { get; } = [];

        public void AddPing(double on, double off)
        {
            Ping.Add(on);
            PingRatios.Add(on / off);
        }

        public void AddTcp(double on, double off)
        {
            Tcp.Add(on);
            TcpRatios.Add(on / off);
        }
    }

    /// <summary>
    /// The 95 % confidence interval of a median, free of any assumption about the distribution: the order statistics
    /// n/2 ∓ 1.96·√n/2 (the binomial's normal approximation).
    /// </summary>
    public static Interval MedianInterval(List<double> values)
    {
        var sorted = values.Order().ToArray();
        var half = 1.96 * Math.Sqrt(sorted.Length) / 2;
        var low = (int)Math.Floor(sorted.Length / 2.0 - half);
        var high = (int)Math.Ceiling(sorted.Length / 2.0 + half);
        return new Interval(sorted[Math.Clamp(low, 0, sorted.Length - 1)], sorted[Math.Clamp(high, 0, sorted.Length - 1)]);
    }
}
