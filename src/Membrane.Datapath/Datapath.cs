using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;

namespace Membrane.Datapath;

/// <summary>
/// The loaded policy datapath: the two tc programs and their shared maps, each bound once by name at load. It needs
/// no policy library: the policy map is written by <c>PolicyMapSynchronizer</c> (Membrane.Datapath.Sync).
/// </summary>
public sealed class PolicyDatapath : IDisposable
{
    public const string ObjectName = "membrane.o";
    public const string FromPodProgram = "from_pod";
    public const string ToPodProgram = "to_pod";
    public const string ToTunnelProgram = "to_tunnel";
    public const string FromUnderlayProgram = "from_underlay";

    private PolicyDatapath(BpfObject obj)
    {
        Bpf = obj;
        FromPod = obj.Program(FromPodProgram);
        ToPod = obj.Program(ToPodProgram);
        ToTunnel = obj.Program(ToTunnelProgram);
        FromUnderlay = obj.Program(FromUnderlayProgram);
        // Each map bound once, to its C struct mirrors: a size mismatch fails here, at load.
        PolicyMap = obj.Map<PolicyMapKey, PolicyMapValue>("mb_policy");
        Fragments = new FragmentTable(obj.Map<uint, uint>("mb_frag_tables"));
        Conntrack = new ConntrackTable(obj.Map<uint, uint>("mb_ct4_tables"), obj.Map<uint, uint>("mb_ct6_tables"), Fragments);
        Drops = obj.Map<uint, Counter>("mb_drops");
        Stats = obj.Map<uint, Counter>("mb_stats");
        Audits = obj.Map<uint, Counter>("mb_audit");
        Events = obj.Map("mb_events");
        Config = obj.Map<uint, DatapathConfig>("mb_config");
        EndpointMap = obj.Map<EndpointKey, EndpointValue>("mb_endpoints");
        Endpoints = new EndpointTable(EndpointMap, Conntrack);
        LocalDelivery = new LocalDeliveryTable(obj.Map<uint, LocalDeliveryValue>("mb_local4"),
            obj.Map<Local6Key, LocalDeliveryValue>("mb_local6"));
        IpCache4Map = obj.Map<IpCache4Key, IpCacheValue>("mb_ipcache4");
        IpCache6Map = obj.Map<IpCache6Key, IpCacheValue>("mb_ipcache6");
        Rules = new RuleRegistry();
        IpCache = new IpCacheSynchronizer(IpCache4Map, IpCache6Map);
        Tunnels = new TunnelTable(obj.Map<IpCache4Key, TunnelValue>("mb_tunnel4"), obj.Map<IpCache6Key, TunnelValue>("mb_tunnel6"),
            obj.Map<NodeKey, NodeValue>("mb_nodes"));
    }

    public BpfObject Bpf { get; }

    /// <summary>How programs attach to devices; the agent sets tcx (pinned links) or clsact at start.</summary>
    public DeviceHooks Hooks { get; set; } = new(AttachMode.Clsact, null);

    /// <summary>Runs on the pod's host-side veth tc ingress: what the pod sends (its egress policy).</summary>
    public BpfProgram FromPod { get; }

    /// <summary>Runs on the pod's host-side veth tc egress: what the pod receives (its ingress policy).</summary>
    public BpfProgram ToPod { get; }

    /// <summary>Tunnel mode, on the tunnel device's tc egress: sends to the destination's node with the source's identity.</summary>
    public BpfProgram ToTunnel { get; }

    /// <summary>
    /// What other nodes send, on the tc ingress of the underlay device (native routing, with host routing) and of the
    /// tunnel device (tunnel mode): believes a tunnel identity only from a known node, and with host routing delivers
    /// packets for this node's pods after their ingress verdict.
    /// </summary>
    public BpfProgram FromUnderlay { get; }

    /// <summary>Routes to other nodes' pod prefixes (remote prefix → node, native or tunnel) and known nodes.</summary>
    public TunnelTable Tunnels { get; }

    public BpfMap<PolicyMapKey, PolicyMapValue> PolicyMap { get; }

    public ConntrackTable Conntrack { get; }

    /// <summary>Per-CPU drop counters by reason.</summary>
    public BpfMap<uint, Counter> Drops { get; }

    /// <summary>Per-CPU counters of packets audit mode let through, by direction and match kind.</summary>
    public BpfMap<uint, Counter> Audits { get; }

    /// <summary>Per-CPU counters: packets let through by direction, events lost (see <see cref="Forwarded"/>).</summary>
    public BpfMap<uint, Counter> Stats { get; }

    /// <summary>The ring buffer of events (no keys or values).</summary>
    public BpfMap Events { get; }

    public BpfMap<uint, DatapathConfig> Config { get; }

    /// <summary>Each endpoint's first-fragment verdicts (made and dropped with its conntrack tables).</summary>
    public FragmentTable Fragments { get; }

    public BpfMap<EndpointKey, EndpointValue> EndpointMap { get; }

    public BpfMap<IpCache4Key, IpCacheValue> IpCache4Map { get; }

    public BpfMap<IpCache6Key, IpCacheValue> IpCache6Map { get; }

    /// <summary>The addresses each endpoint may send from (source validation).</summary>
    public EndpointTable Endpoints { get; }

    /// <summary>The pods of this node that host routing delivers to from the sender's hook.</summary>
    public LocalDeliveryTable LocalDelivery { get; }

    public RuleRegistry Rules { get; }

    public IpCacheSynchronizer IpCache { get; }

    public static PolicyDatapath Load(LoadOptions? options = null) =>
        new(BpfObject.Load(Path.Combine(BpfObject.ObjectDirectory, ObjectName), options));

    /// <summary>
    /// Turns event emission on or off (a monitor turns it on while it listens): drops (and audits), new connections, and
    /// every other packet let through (<paramref name="traces"/>: established, replies, related ICMP errors).
    /// </summary>
    public void SetEvents(bool drops, bool verdicts, bool traces = false)
    {
        lock (_configGate)
        {
            _eventFlags = (drops ? DatapathConfig.DropEvents : 0) | (verdicts ? DatapathConfig.VerdictEvents : 0)
                | (traces ? DatapathConfig.TraceEvents : 0);
            WriteConfig();
        }
    }

    /// <summary>Agent-wide policy audit mode: on every endpoint, what policy would drop is let through and reported.</summary>
    public void SetAuditMode(bool enabled)
    {
        lock (_configGate)
        {
            _audit = enabled;
            WriteConfig();
        }
    }

    public bool AuditMode => _audit;

    /// <summary>
    /// Host routing: <c>from_pod</c> judges a packet for a pod of this node by that pod's ingress policy too and delivers
    /// it into the pod's namespace (<c>bpf_redirect_peer</c>), past the node's forwarding and <c>to_pod</c>. Off: every
    /// packet takes the node's stack, and a pod's ingress policy is judged by <c>to_pod</c> (the legacy path).
    /// </summary>
    public void SetHostRouting(bool enabled)
    {
        lock (_configGate)
        {
            _hostRouting = enabled;
            WriteConfig();
        }
    }

    public bool HostRouting => _hostRouting;

    /// <summary>
    /// Tunnel mode: the node's tunnel device and its address. With host routing, <c>from_pod</c> sends packets for other
    /// nodes' pods into it directly, and <c>from_underlay</c> on its ingress insists on tunnel metadata from a known node.
    /// </summary>
    public void SetTunnelDevice(uint ifIndex, ReadOnlySpan<byte> mac)
    {
        if (mac.Length != 6)
        {
            throw new ArgumentException($"a MAC address has 6 bytes, not {mac.Length}", nameof(mac));
        }
        lock (_configGate)
        {
            _tunnelIfIndex = ifIndex;
            _tunnelMac = mac.ToArray();
            WriteConfig();
        }
    }

    private readonly Lock _configGate = new();
    private uint _tunnelIfIndex;
    private byte[] _tunnelMac = new byte[6];
    private uint _eventFlags;
    private bool _audit;
    private bool _hostRouting;

    private unsafe void WriteConfig()
    {
        var config = new DatapathConfig
        {
            Flags = _eventFlags | (_audit ? DatapathConfig.Audit : 0) | (_hostRouting ? DatapathConfig.HostRouting : 0),
            Generation = _generation,
            TunnelIfIndex = _tunnelIfIndex,
        };
        _tunnelMac.CopyTo(new Span<byte>(config.TunnelMac, 6));
        Config.Update(0u, config);
    }

    private uint _generation = 1;

    /// <summary>
    /// Ends the current configuration generation: from_pod's shortcut past a local destination's ingress check, which
    /// a connection earns by being admitted within one generation, no longer holds, and each connection's next packet
    /// meets the destination's policy and conntrack again. Called after every change of policy, identities, endpoints
    /// or conntrack (after the change is in the maps). The kernel compares the low byte; 0 there means "never".
    /// </summary>
    public void AdvanceGeneration()
    {
        lock (_configGate)
        {
            _generation++;
            if ((_generation & 0xff) == 0)
            {
                _generation++;
            }
            WriteConfig();
        }
    }

    /// <summary>Packets audit mode let through, by direction (<see cref="WireDirection"/>) and match kind, summed over CPUs.</summary>
    public IReadOnlyDictionary<(WireDirection Direction, WireMatchKind Kind), Counter> AuditCounters()
    {
        var result = new Dictionary<(WireDirection, WireMatchKind), Counter>();
        foreach (var direction in new[] { WireDirection.Ingress, WireDirection.Egress })
        {
            foreach (var kind in Enum.GetValues<WireMatchKind>())
            {
                result[(direction, kind)] = Sum(Audits, (uint)direction * MatchSlots + (uint)kind);
            }
        }
        return result;
    }

    /// <summary>Match kinds per direction in mb_audit (MATCH_SLOTS in maps.h).</summary>
    private const uint MatchSlots = 8;

    /// <summary>Drop counters by reason (both directions), summed over CPUs.</summary>
    public IReadOnlyDictionary<DropReason, Counter> DropCounters() => DropCountersByDirection()
        .GroupBy(d => d.Key.Reason)
        .ToDictionary(g => g.Key, g => new Counter
        {
            Packets = g.Aggregate(0UL, (sum, d) => sum + d.Value.Packets),
            Bytes = g.Aggregate(0UL, (sum, d) => sum + d.Value.Bytes),
        });

    /// <summary>Drop counters by reason and direction (<see cref="WireDirection"/> values), summed over CPUs.</summary>
    public IReadOnlyDictionary<(DropReason Reason, WireDirection Direction), Counter> DropCountersByDirection()
    {
        var result = new Dictionary<(DropReason, WireDirection), Counter>();
        foreach (var direction in new[] { WireDirection.Ingress, WireDirection.Egress })
        {
            foreach (var reason in Enum.GetValues<DropReason>().Where(r => r != DropReason.Allowed))
            {
                result[(reason, direction)] = Sum(Drops, (uint)direction * ReasonSlots + (uint)reason);
            }
        }
        return result;
    }

    /// <summary>Packets the programs let through: delivered to pods (ingress) and sent by them (egress).</summary>
    public (Counter Ingress, Counter Egress) Forwarded() => (Sum(Stats, 0), Sum(Stats, 1));

    /// <summary>Events the ring buffer had no room for (the monitor and flow readers missed them).</summary>
    public ulong EventsLost() => Sum(Stats, 2).Packets;

    /// <summary>Reasons per direction in mb_drops (REASON_MAX in common.h).</summary>
    private const uint ReasonSlots = 8;

    private static Counter Sum(BpfMap<uint, Counter> map, uint index)
    {
        var perCpu = map.LookupPerCpu<uint, Counter>(index);
        return new Counter
        {
            Packets = perCpu.Aggregate(0UL, (sum, c) => sum + c.Packets),
            Bytes = perCpu.Aggregate(0UL, (sum, c) => sum + c.Bytes),
        };
    }

    /// <summary>Empties conntrack and the fragment table: a clean slate for tests and benchmarks.</summary>
    public int FlushConntrack()
    {
        var count = Conntrack.Flush();
        FlushFragments();
        AdvanceGeneration();
        return count;
    }

    /// <summary>Forgets the first fragments' verdicts of these endpoints (all when null); see <see cref="FragmentTable.Flush"/>.</summary>
    public int FlushFragments(IReadOnlySet<uint>? ifIndexes = null) => Fragments.Flush(ifIndexes);

    public void Dispose() => Bpf.Dispose();
}
