using System.Globalization;
using System.Net;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Tests;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;
using static Membrane.Datapath.Tests.Packets;

namespace Membrane.Bench;

/// <summary>One measured scenario: nanoseconds per packet in the kernel and the ratio to the floor.</summary>
public sealed record DatapathResult(string Scenario, double Nanoseconds, double Ratio, string Method);

/// <summary>
/// Per-packet cost of the tc programs, measured by BPF_PROG_TEST_RUN in the kernel (its own timer) in rounds that
/// measure the empty program and then every scenario; a scenario's ratio is the median of its ratios to the floor of
/// the same round.
/// Scenarios whose every packet must be a new flow (an allowed one creates conntrack state) cannot repeat one
/// packet; they run many single-shot packets with distinct identifiers and are compared with the floor measured
/// single-shot too. The programs of steps.o, to_pod's established path cut short after each step, show where an
/// established packet's time goes, and their lookup step run on new packets what the conntrack insert costs.
/// </summary>
public static class DatapathBenchmark
{
    private const uint IfIndex = 1;
    public const uint LargeConntrackEntries = 262144;
    public const string CutAfterParse = "established TCP, cut after parsing";
    public const string CutAfterLookup = "established TCP, cut after the conntrack lookup";
    public const string CutAfterSharedLookup = "established TCP, cut after a lookup in one shared table (no per-endpoint tables)";
    public const string CutAfterAccounting = "established TCP, cut after the accounting";
    public const string Ipv6Established = "established ICMPv6 echo, 2 extension headers";
    public const string Ipv6CutAfterParse = "established ICMPv6 echo, 2 extension headers, cut after parsing";
    public const string Ipv6CutAfterLookup = "established ICMPv6 echo, 2 extension headers, cut after the lookup";
    public const string LookupHitSingle = "conntrack lookup that hits, single-shot";
    public const string LookupInsertSingle = "conntrack lookup that misses and inserts, single-shot";

    public static IReadOnlyList<DatapathResult> Run(int repeat, int runs, int singles)
    {
        using var floorObject = BpfObject.Load(Path.Combine(BpfObject.ObjectDirectory, "floor.o"));
        using var stepsObject = BpfObject.Load(Path.Combine(BpfObject.ObjectDirectory, "steps.o"));
        var steps = new ConntrackTable(stepsObject.Map<uint, uint>("mb_ct4_tables"), stepsObject.Map<uint, uint>("mb_ct6_tables"));
        steps.AddEndpoint(IfIndex);
        using var datapath = PolicyDatapath.Load();
        datapath.Conntrack.AddEndpoint(IfIndex);
        // The same programs with the endpoint's conntrack table at 262,144 IPv4 entries (about 30 MiB) instead of the
        // default 8,192 (about 1 MiB, cache-sized): a new flow's lookup miss and insert touch a bucket and a free element
        // of the table, and on the large table those are cache (and TLB) misses. Measured side by side, the difference is
        // what the table's size costs.
        using var largeTable = PolicyDatapath.Load();
        largeTable.Conntrack.EndpointCapacity = LargeConntrackEntries;
        largeTable.Conntrack.AddEndpoint(IfIndex);
        var floor = floorObject.Program("pass_all");

        var manifests = ManifestLoader.LoadText("""
            apiVersion: v1
            kind: Pod
            metadata: {name: client, namespace: bench, labels: {app: client}}
            spec: {containers: [{name: c}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: server, namespace: bench, labels: {app: server}}
            spec: {containers: [{name: s}]}
            ---
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: server, namespace: bench}
            spec:
              endpointSelector: {matchLabels: {app: server}}
              ingress:
              - fromEndpoints: [{matchLabels: {app: client}}]
                toPorts: [{ports: [{port: "80", protocol: TCP}]}]
              - fromEndpoints: [{matchLabels: {app: client}}]
                icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}]}]
              ingressDeny:
              - icmps: [{fields: [{type: 13}]}]
            """, "bench.yaml").OrThrow();
        var engine = new PolicyEngine();
        engine.Apply(BenchAddresses.Assign(manifests));
        foreach (var loaded in new[] { datapath, largeTable })
        {
            loaded.IpCache.Sync(engine.IpCache());
            new Membrane.Datapath.Sync.PolicyMapSynchronizer(loaded.PolicyMap, loaded.Rules).Sync(IfIndex,
                engine.Resolve("bench/server").State);
        }

        var c = engine.FindEndpoint("bench/client")!.Address(System.Net.Sockets.AddressFamily.InterNetwork)!;
        var s = engine.FindEndpoint("bench/server")!.Address(System.Net.Sockets.AddressFamily.InterNetwork)!;
        var c6 = engine.FindEndpoint("bench/client")!.Address(System.Net.Sockets.AddressFamily.InterNetworkV6)!;
        var s6 = engine.FindEndpoint("bench/server")!.Address(System.Net.Sockets.AddressFamily.InterNetworkV6)!;

        var tcpSyn = Frame(c, s, Tcp, TcpSegment(40000, 80));
        var tcpAck = Frame(c, s, Tcp, TcpSegment(40000, 80, TcpAck, payload: 64));
        var echo = Frame(c, s, Icmp, IcmpMessage(8, 0, id: 1));
        var echo6ext = V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 2),
            (0, new byte[] { 1, 4, 0, 0, 0, 0 }), (60, new byte[] { 1, 4, 0, 0, 0, 0 })));
        var deniedEcho = Frame(IPAddress.Parse("198.51.100.1"), s, Icmp, IcmpMessage(8, 0, id: 3));
        var denyHit = Frame(c, s, Icmp, IcmpMessage(13, 0, id: 4));

        // Open the connections that the "established" scenarios then hit.
        Require(datapath.ToPod.TestRun(tcpSyn).ReturnValue == BpfProgram.TcActOk, "SYN allowed");
        Require(datapath.ToPod.TestRun(echo).ReturnValue == BpfProgram.TcActOk, "echo allowed");
        Require(datapath.ToPod.TestRun(echo6ext).ReturnValue == BpfProgram.TcActOk, "echo6 allowed");
        Require(datapath.ToPod.TestRun(deniedEcho).ReturnValue == BpfProgram.TcActShot, "world echo denied");
        Require(datapath.ToPod.TestRun(denyHit).ReturnValue == BpfProgram.TcActShot, "timestamp denied");
        var cutAfterParse = stepsObject.Program("cut_after_parse");
        var cutAfterLookup = stepsObject.Program("cut_after_lookup");
        var cutAfterAccounting = stepsObject.Program("cut_after_accounting");
        var cutAfterSharedLookup = stepsObject.Program("cut_after_shared_lookup");
        Require(cutAfterSharedLookup.TestRun(tcpAck).ReturnValue == BpfProgram.TcActShot, "the shared table's first lookup to miss");
        Require(cutAfterSharedLookup.TestRun(tcpAck).ReturnValue == BpfProgram.TcActOk, "the shared table's second lookup to hit");
        Require(cutAfterLookup.TestRun(tcpAck).ReturnValue == BpfProgram.TcActShot, "the steps' first lookup to miss");
        Require(cutAfterLookup.TestRun(tcpAck).ReturnValue == BpfProgram.TcActOk, "the steps' second lookup to hit");
        Require(cutAfterAccounting.TestRun(tcpAck).ReturnValue == BpfProgram.TcActOk, "the steps' accounting");
        Require(cutAfterLookup.TestRun(echo6ext).ReturnValue == BpfProgram.TcActShot, "the steps' first IPv6 lookup to miss");
        Require(cutAfterLookup.TestRun(echo6ext).ReturnValue == BpfProgram.TcActOk, "the steps' second IPv6 lookup to hit");

        // Rounds interleave the floor with every scenario, and each scenario's ratio is the median of its ratios to the
        // floor of the same round: the host's noise comes in bursts of seconds, which would otherwise land on a
        // whole scenario (or on the floor) and skew its ratio.
        (string Name, BpfProgram Program, byte[] Frame)[] scenarios =
        [
            (CutAfterParse, cutAfterParse, tcpAck),
            (CutAfterSharedLookup, cutAfterSharedLookup, tcpAck),
            (CutAfterLookup, cutAfterLookup, tcpAck),
            (CutAfterAccounting, cutAfterAccounting, tcpAck),
            ("established TCP", datapath.ToPod, tcpAck),
            ("established ICMP echo", datapath.ToPod, echo),
            (Ipv6CutAfterParse, cutAfterParse, echo6ext),
            (Ipv6CutAfterLookup, cutAfterLookup, echo6ext),
            (Ipv6Established, datapath.ToPod, echo6ext),
            ("new ICMP echo, denied (no rule)", datapath.ToPod, deniedEcho),
            ("new ICMP timestamp, deny-rule hit", datapath.ToPod, denyHit),
        ];
        var floors = new List<double>();
        var times = scenarios.Select(_ => new List<double>()).ToArray();
        var ratios = scenarios.Select(_ => new List<double>()).ToArray();
        for (var round = 0; round < runs; round++)
        {
            double floorNs = floor.TestRun(tcpAck, repeat).DurationNs;
            floors.Add(floorNs);
            for (var i = 0; i < scenarios.Length; i++)
            {
                double ns = scenarios[i].Program.TestRun(scenarios[i].Frame, repeat).DurationNs;
                times[i].Add(ns);
                ratios[i].Add(ns / floorNs);
            }
        }
        var method = $"repeat {repeat:N0}, median of {runs}";
        var results = new List<DatapathResult> { new("empty program (floor)", Median(floors), 1, method) };
        for (var i = 0; i < scenarios.Length; i++)
        {
            results.Add(new(scenarios[i].Name, Median(times[i]), Median(ratios[i]), method));
        }

        // New allowed flows: every packet a fresh echo identifier, one test run each.
        var fresh = (byte[])echo.Clone();
        var newAllowed = new List<double>(singles);
        var newAllowedLarge = new List<double>(singles);
        var floorSingle = new List<double>(singles);
        var establishedSingle = new List<double>(singles);
        var deniedSingle = new List<double>(singles);
        var lookupHitSingle = new List<double>(singles);
        var lookupInsertSingle = new List<double>(singles);
        for (var i = 0; i < singles; i++)
        {
            fresh[14 + 20 + 4] = (byte)(i >> 8);
            fresh[14 + 20 + 5] = (byte)i;
            fresh[14 + 4] = (byte)(i >> 16); // vary the IP id too, so identifiers beyond 65,535 stay distinct flows
            fresh[14 + 20 + 6] = (byte)(i >> 16);
            newAllowed.Add(datapath.ToPod.TestRun(fresh).DurationNs);
            floorSingle.Add(floor.TestRun(fresh).DurationNs);
            newAllowedLarge.Add(largeTable.ToPod.TestRun(fresh).DurationNs);
            establishedSingle.Add(datapath.ToPod.TestRun(tcpAck).DurationNs);
            deniedSingle.Add(datapath.ToPod.TestRun(deniedEcho).DurationNs);
            lookupHitSingle.Add(cutAfterLookup.TestRun(tcpAck).DurationNs);
            lookupInsertSingle.Add(cutAfterLookup.TestRun(fresh).DurationNs);
            // Never full: an insert that evicts would measure the LRU's eviction instead.
            if (i % (ConntrackTable.DefaultEndpointCapacity - 192) == ConntrackTable.DefaultEndpointCapacity - 193)
            {
                datapath.FlushConntrack();
                steps.Flush();
                cutAfterLookup.TestRun(tcpAck); // the hit's entry again
            }
            if (i % 50_000 == 49_999)
            {
                largeTable.FlushConntrack();
            }
        }
        var floorSingleNs = Median(floorSingle);
        var singleMethod = $"{singles:N0} single runs";
        results.Add(new("empty program (floor), single-shot", floorSingleNs, 1, singleMethod));
        void AddSingle(string scenario, List<double> times)
        {
            var ns = Median(times);
            results.Add(new(scenario, ns, ns / floorSingleNs, singleMethod));
        }
        AddSingle($"new ICMP echo, allowed (incl. conntrack insert), endpoint table of {ConntrackTable.DefaultEndpointCapacity:N0}",
            newAllowed);
        AddSingle($"new ICMP echo, allowed, endpoint table of {LargeConntrackEntries:N0}", newAllowedLarge);
        AddSingle("established TCP, single-shot", establishedSingle);
        AddSingle("new ICMP echo, denied, single-shot", deniedSingle);
        AddSingle(LookupHitSingle, lookupHitSingle);
        AddSingle(LookupInsertSingle, lookupInsertSingle);
        return results;
    }

    public static string Format(IReadOnlyList<DatapathResult> results)
    {
        var w = new StringWriter(CultureInfo.InvariantCulture);
        w.WriteLine($"{"scenario",-66} {"ns/packet",10} {"× floor",8}  method");
        foreach (var r in results)
        {
            w.WriteLine($"{r.Scenario,-66} {r.Nanoseconds,10:F1} {r.Ratio,8:F2}  {r.Method}");
        }
        return w.ToString();
    }

    private static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    private static void Require(bool condition, string what)
    {
        if (!condition)
        {
            throw new InvalidOperationException($"benchmark setup failed: expected {what}");
        }
    }
}
