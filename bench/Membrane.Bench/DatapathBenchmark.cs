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
public static partial class DatapathBenchmark
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
        var steps = new ConntrackTable(stepsObject.Map<uint, uint>("mb_ct4_tables"), stepsObject.Map<uint, uint>("mb_ct6_tables"),
            new FragmentTable(stepsObject.Map<uint, uint>("mb_frag_tables")));
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
        var results = Interleaved(floor, tcpAck, scenarios, runs, repeat, "empty program (floor)",
            $"repeat {repeat:N0}, median of {runs}").ToList();

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
        results.AddRange(HostRouting(engine, floor, repeat, runs));
        results.AddRange(Tunnel(engine, floor, singles));
        return results;
    }

    public const string HostRoutingBatchFloor = "empty program (floor), batches of 250";
    public const string LegacyFromPod = "established TCP, from_pod (legacy: the source's egress only)";
    public const string LegacyToPod = "established TCP, to_pod (legacy: the destination's ingress)";
    public const string HostRoutingDelivery =
        "established TCP, from_pod with host routing (rewrite, redirect; the destination's check skipped within a tick)";
    public const string HostRoutingJudged = "established TCP FIN, from_pod with host routing (both verdicts: never skipped)";
    public const string HostRoutingNotLocal = "established TCP, from_pod with host routing, destination not on this node";
    public const string TunnelFloor = "empty program (floor), single-shot, beside the tunnel rows";
    public const string TunnelEgressOnly = "established TCP, from_pod with host routing, destination on no node, single-shot";
    public const string TunnelWrapped = "established TCP, from_pod with host routing, another node's pod in tunnel mode " +
        "(wrapped in VXLAN, sent from the underlay), single-shot";
    public const string TunnelUnwrapped =
        "established TCP in VXLAN from a known node, from_underlay (unwrapped, the destination's verdict, delivered), single-shot";

    /// <summary>
    /// What host routing costs a delivered packet: from_pod judging both sides, rewriting the frame and redirecting it,
    /// against the legacy path's two hook runs (from_pod's egress verdict, to_pod's ingress verdict). A delivered packet
    /// loses a hop each run and the kernel reruns one packet without restoring it, so these run in batches of 250 (from a
    /// TTL of 255) instead of one long repeat: the median over batches of the time per packet, the floor measured alike.
    /// </summary>
    private static List<DatapathResult> HostRouting(PolicyEngine engine, BpfProgram floor, int repeat, int runs)
    {
        // An interface of this namespace: the program checks its MTU (a test run never carries out the redirect).
        var destination = (uint)System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces()
            .First(i => i.NetworkInterfaceType != System.Net.NetworkInformation.NetworkInterfaceType.Loopback).GetIPProperties()
            .GetIPv4Properties().Index;
        const int Batch = 250;
        using var routed = PolicyDatapath.Load();
        using var legacy = PolicyDatapath.Load();
        var client = engine.FindEndpoint("bench/client")!;
        var server = engine.FindEndpoint("bench/server")!;
        var macs = new DeliveryMacs(System.Net.NetworkInformation.PhysicalAddress.Parse("02-AA-00-00-00-07"),
            System.Net.NetworkInformation.PhysicalAddress.Parse("02-BB-00-00-00-07"));
        foreach (var loaded in new[] { routed, legacy })
        {
            var policy = new Membrane.Datapath.Sync.PolicyMapSynchronizer(loaded.PolicyMap, loaded.Rules);
            loaded.IpCache.Sync(engine.IpCache());
            policy.Sync(IfIndex, engine.Resolve("bench/client").State);
            policy.Sync(destination, engine.Resolve("bench/server").State);
            loaded.Endpoints.Set(IfIndex, client.Addresses);
            loaded.Endpoints.Set(destination, server.Addresses);
            loaded.LocalDelivery.Set(destination, server.Addresses, macs);
        }
        routed.SetHostRouting(true);
        var c = client.Address(System.Net.Sockets.AddressFamily.InterNetwork)!;
        var s = server.Address(System.Net.Sockets.AddressFamily.InterNetwork)!;
        // As a pod sends it: to its gateway's MAC (loopback's, under the test run), a fresh TTL.
        byte[] Sent(byte[] frame)
        {
            frame.AsSpan(0, 6).Clear();
            return HopLimit(frame, 255);
        }
        var syn = Sent(Frame(c, s, Tcp, TcpSegment(40000, 80)));
        var ack = Sent(Frame(c, s, Tcp, TcpSegment(40000, 80, TcpAck, payload: 64)));
        var away = Sent(Frame(c, IPAddress.Parse("10.99.0.1"), Tcp, TcpSegment(40001, 80, TcpAck, payload: 64)));
        // A FIN always meets the destination's verdict (conntrack must see it close): the cost without the shortcut.
        var fin = Sent(Frame(c, s, Tcp, TcpSegment(40002, 80, TcpAck | 0x01, payload: 64)));
        Require(routed.FromPod.TestRun(syn).ReturnValue == BpfProgram.TcActRedirect, "host routing to deliver the SYN");
        Require(routed.FromPod.TestRun(ack).ReturnValue == BpfProgram.TcActRedirect, "host routing to deliver the ACK");
        Require(routed.FromPod.TestRun(Sent(Frame(c, s, Tcp, TcpSegment(40002, 80)))).ReturnValue == BpfProgram.TcActRedirect,
            "host routing to deliver a second SYN");
        Require(routed.FromPod.TestRun(Sent(Frame(c, IPAddress.Parse("10.99.0.1"), Tcp, TcpSegment(40001, 80)))).ReturnValue
            == BpfProgram.TcActOk, "a connection to another node to pass");
        Require(legacy.FromPod.TestRun(syn).ReturnValue == BpfProgram.TcActOk, "the legacy path to pass the SYN");
        (string Name, BpfProgram Program, byte[] Frame)[] scenarios =
        [
            (LegacyFromPod, legacy.FromPod, ack),
            (HostRoutingDelivery, routed.FromPod, ack),
            (HostRoutingJudged, routed.FromPod, fin),
            (HostRoutingNotLocal, routed.FromPod, away),
        ];
        var batches = Math.Max(1, repeat / Batch / 10);
        return [.. Interleaved(floor, ack, scenarios, runs * batches, Batch, HostRoutingBatchFloor,
            $"{runs * batches:N0} batches of {Batch}, median")];
    }

    /// <summary>
    /// Rounds that each run the floor and then every scenario <paramref name="repeat"/> times: a scenario's figure is the
    /// median of its times, its ratio the median of its ratios to the same round's floor (noise comes in bursts that would
    /// otherwise land on one scenario). The floor's row first.
    /// </summary>
    private static IEnumerable<DatapathResult> Interleaved(BpfProgram floor, byte[] floorFrame,
        (string Name, BpfProgram Program, byte[] Frame)[] scenarios, int rounds, int repeat, string floorName, string method)
    {
        var floors = new List<double>();
        var times = scenarios.Select(_ => new List<double>()).ToArray();
        var ratios = scenarios.Select(_ => new List<double>()).ToArray();
        for (var round = 0; round < rounds; round++)
        {
            double floorNs = floor.TestRun(floorFrame, repeat).DurationNs;
            floors.Add(floorNs);
            for (var i = 0; i < scenarios.Length; i++)
            {
                double ns = scenarios[i].Program.TestRun(scenarios[i].Frame, repeat).DurationNs;
                times[i].Add(ns);
                ratios[i].Add(ns / floorNs);
            }
        }
        yield return new(floorName, Median(floors), 1, method);
        for (var i = 0; i < scenarios.Length; i++)
        {
            yield return new(scenarios[i].Name, Median(times[i]), Median(ratios[i]), method);
        }
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
