using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Changes;
using Membrane.Agent.Endpoints;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;
using Membrane.Policy.Identity;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Queries;

/// <summary>
/// The API's read-only views of the agent: status, policies, trace, endpoints, identities, maps, conntrack. Nothing
/// here changes the engine, the endpoints or the kernel's policy. All but <see cref="Status"/> run under the agent's
/// lock (<see cref="AgentService.ReadAsync{T}"/>).
/// </summary>
public sealed class AgentQueries(
    AgentOptions options, PolicyDatapath datapath, PolicyMapSynchronizer policyMap, EndpointManager endpoints, Func<PolicyEngine> engine,
        IObjectStore store) : IChangeObserver
{
    private PolicyEngine Engine => engine();

    /// <summary>Where metrics are served (null: not served); set once the listener runs.</summary>
    public string? MetricsAddress { get; set; }

    /// <summary>How long the last regeneration took (endpoints, maps, programs, conntrack).</summary>
    public double LastRegenerationMilliseconds { get; set; }

    /// <summary>What status reports, published after every change: status never waits behind a long change.</summary>
    private sealed record Published(long Revision, int Endpoints, int Identities, int Policies, int Namespaces,
        double RegenerationMilliseconds,
        List<MapFillOutput> Maps);

    private volatile Published? _published;

    /// <summary>Cluster mode: the cluster part of status for the revision this node enforces.</summary>
    public Func<long, ClusterStatusOutput>? Cluster { get; set; }

    void IChangeObserver.Changed() => Publish();

    void IChangeObserver.NotEnforced(long revision, string reason)
    {
    }

    /// <summary>Takes a new status snapshot; the agent calls it after every change, under its lock.</summary>
    public void Publish()
    {
        IdentityKinds = Engine.Identities.GroupBy(i => i.Kind.ToString().ToLowerInvariant())
            .ToDictionary(g => g.Key, g => g.Count(), StringComparer.Ordinal);
        EndpointNames = endpoints.Records.Values.ToDictionary(r => (uint)r.IfIndex, r => r.Key);
        _published = new(store.Revision, endpoints.Records.Count, Engine.Identities.Count(), Engine.Policies.Count(),
            Engine.Namespaces.Count(), Math.Round(LastRegenerationMilliseconds, 3), MapFill());
    }

    /// <summary>Where the host ends of the endpoints are: the sandbox's node namespace, or the machine's own (CNI).</summary>
    private string NodeNamespace => options.Runtime == AgentRuntime.Cni ? "the host's (container runtimes through membrane-cni)"
        : options.NodeNamespace;

    /// <summary>Endpoints by the ifindex of their host end at the last publication (metrics read it without the lock).</summary>
    public IReadOnlyDictionary<uint, string> EndpointNames { get; private set; } = new Dictionary<uint, string>();

    /// <summary>Identities by kind at the last publication (metrics read it without the lock).</summary>
    public IReadOnlyDictionary<string, int> IdentityKinds { get; private set; } = new Dictionary<string, int>();

    /// <summary>Status, or null while the agent is still starting.</summary>
    public StatusResponse? TryStatus() => _published is null ? null : Status();

    /// <summary>Safe without the lock: the last published state and the kernel's counters.</summary>
    public StatusResponse Status()
    {
        var p = _published ?? throw new InvalidOperationException("the agent is still starting");
        var drops = datapath.DropCounters().ToDictionary(d => DropReasons.Describe(d.Key), d => d.Value.Packets);
        return new StatusResponse(typeof(AgentQueries).Assembly.GetName().Version?.ToString() ?? "0", p.Revision,
            File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), p.Endpoints, p.Identities, p.Policies, p.Namespaces,
            options.StateDirectory, options.PinDirectory, NodeNamespace, drops, p.RegenerationMilliseconds, p.Maps,
            Cluster?.Invoke(p.Revision), datapath.AuditMode, datapath.Hooks.Mode == AttachMode.Tcx
                ? $"tcx links pinned in {datapath.Hooks.LinkPinDirectory}" : "clsact (tc filters)", MetricsAddress,
            MetricsAddress is { } served && !IPAddress.IsLoopback(IPEndPoint.Parse(served).Address), datapath.HostRouting
                ? "bpf (packets between this node's pods are judged at the sender's hook and delivered into the destination)"
                : "legacy (packets between this node's pods are forwarded by the node)");
    }

    private List<MapFillOutput> MapFill()
    {
        var (v4, v6) = datapath.IpCache.Count;
        MapFillOutput Fill(BpfMap map, long entries) => new(map.Name, entries, map.MaxEntries, Math.Round(100.0 * entries / map.MaxEntries,
            2));
        return [Fill(datapath.PolicyMap, policyMap.Count), Fill(datapath.IpCache4Map, v4), Fill(datapath.IpCache6Map, v6),
            Fill(datapath.EndpointMap, endpoints.Records.Count)];
    }

    public PolicyListResponse Policies() => new(store.Revision, Engine.Policies
        .OrderBy(p => p.Origin.ToString(), StringComparer.Ordinal)
        .Select(p => new PolicyItem(p.Origin.Kind, p.Origin.Namespace, p.Origin.Name, p.SourceYaml)).ToList());

    public TraceOutput Trace(TraceQuery query)
    {
        ArgumentNullException.ThrowIfNull(query);
        var request = AgentInputException.Flow(
            query.From, query.To, query.Protocol, query.Port, query.IcmpType, query.IcmpCode, query.Family);
        foreach (var pod in new[] { request.From, request.To }.Where(p => !Tracer.IsLabels(p)))
        {
            if (Engine.FindEndpoint(pod) is null)
            {
                throw new AgentInputException($"no pod {pod}");
            }
        }
        var result = Tracer.Trace(Engine, request);
        // Audit mode: a side policy denies is let through by the datapath when its endpoint (this node's) is audited.
        var audited = new[] { (result.Egress, request.From), (result.Ingress, request.To) }
            .Where(side => !side.Item1.Allowed && endpoints.Find(side.Item2) is { } record && (record.PolicyAudit || datapath.AuditMode))
            .Select(side => $"{side.Item2} ({side.Item1.Direction.ToString().ToLowerInvariant()})").ToList();
        var text = Tracer.Format(Engine, result);
        if (audited.Count > 0)
        {
            text += $"audit mode on {string.Join(", ", audited)}: the datapath lets this through and reports it as AUDIT\n";
        }
        var checkedAt = CheckedAt(request.From, request.To);
        if (checkedAt is not null)
        {
            text += $"where: {checkedAt}\n";
        }
        return TraceJson.From(result) with { Text = text, AuditedBy = audited.Count > 0 ? audited : null, CheckedAt = checkedAt };
    }

    /// <summary>Which hook judges each side of a flow between two pods, when at least one of them is on this node.</summary>
    private string? CheckedAt(string from, string to)
    {
        EndpointRecord? source = endpoints.Find(from), destination = endpoints.Find(to);
        if (source is null && destination is null)
        {
            return null;
        }
        if (source is not null && destination is not null && datapath.HostRouting
            && datapath.LocalDelivery.IfIndexes().Contains((uint)destination.IfIndex))
        {
            return $"both sides at the source's hook (from_pod on {source.HostInterface}): host routing judges {to}'s ingress " +
                $"policy there and delivers into its namespace, so {to}'s to_pod (on {destination.HostInterface}) does not run; " +
                "fragments, TTL 1 and packets too big for the link take the node's stack and meet to_pod there";
        }
        var egress = source is null ? $"{from}'s egress on its own node" : $"{from}'s egress at from_pod on {source.HostInterface}";
        var underlay = options.RoutingMode == RoutingMode.Native ? Sandbox.UnderlayNetwork.NodeDevice
            : $"{Sandbox.UnderlayNetwork.NodeDevice}, which unwraps the tunnel's packets itself, or on " +
                $"{Sandbox.UnderlayNetwork.TunnelDevice} for those the kernel's device unwraps";
        var ingress = destination is null ? $"{to}'s ingress on its own node"
            : source is null && datapath.HostRouting && options.UnderlayAddress is not null
                && datapath.LocalDelivery.IfIndexes().Contains((uint)destination.IfIndex)
            ? $"{to}'s ingress at this node's underlay hook (from_underlay on {underlay}), which delivers " +
                $"into its namespace (host routing); fragments, TTL 1 and packets too big for the link meet to_pod on " +
                $"{destination.HostInterface}"
            : $"{to}'s ingress at to_pod on {destination.HostInterface}";
        return $"{egress}; {ingress}";
    }

    /// <summary>This node's endpoints; in cluster mode also the other nodes' pods (no interface here), each with its node.</summary>
    public List<EndpointOutput> Endpoints()
    {
        var local = endpoints.Records.Values.Select(r => Endpoint(r));
        var remote = options.Node is null ? [] : Engine.Endpoints.Where(e => endpoints.Find(e.Key) is null && e.Pod.NodeName is not null
            && e.Pod.NodeName != options.Node).Select(e => Remote(e.Key));
        return local.Concat(remote).OrderBy(e => e.Pod, StringComparer.Ordinal).ToList();
    }

    private EndpointOutput Remote(string key)
    {
        var policy = Engine.Resolve(key);
        var e = policy.Endpoint;
        return new EndpointOutput(0, key, e.Identity.Id, e.Labels.Labels.Select(l => l.ToString()).ToList(),
            e.Address(AddressFamily.InterNetwork)?.ToString(), e.Address(AddressFamily.InterNetworkV6)?.ToString(), "", "",
            policy.Enforced.Contains(TrafficDirection.Ingress), policy.Enforced.Contains(TrafficDirection.Egress), policy.State.Count,
            policy.SelectingSpecs.Select(s => $"{s.Origin}: {s.Path}").Distinct().ToList(), e.Pod.NodeName);
    }

    /// <summary>This node's endpoint; in cluster mode a pod of another node is shown as the peer it is here, with its node.</summary>
    public EndpointOutput Endpoint(string idOrPod)
    {
        if (!int.TryParse(idOrPod, out _) && endpoints.Find(idOrPod) is null && Engine.FindEndpoint(idOrPod) is { } peer
            && peer.Pod.NodeName is { } node && node != options.Node)
        {
            return new EndpointOutput(0, peer.Key, peer.Identity.Id, peer.Labels.Labels.Select(l => l.ToString()).ToList(),
                peer.Address(AddressFamily.InterNetwork)?.ToString(), peer.Address(AddressFamily.InterNetworkV6)?.ToString(), "", "",
                false, false, 0, [], node, Remote: true);
        }
        return Endpoint(FindRecord(idOrPod));
    }

    public EndpointRecord FindRecord(string idOrPod) =>
        (int.TryParse(idOrPod, out var id) ? endpoints.Records.Values.FirstOrDefault(r => r.IfIndex == id) : endpoints.Find(idOrPod))
        ?? throw new AgentInputException($"no endpoint \"{idOrPod}\" (use an id from 'membrane endpoint list' or NAMESPACE/POD)");

    private EndpointOutput Endpoint(EndpointRecord record)
    {
        var policy = Engine.Resolve(record.Key);
        var e = policy.Endpoint;
        return new EndpointOutput(record.IfIndex, record.Key, e.Identity.Id, e.Labels.Labels.Select(l => l.ToString()).ToList(),
            e.Address(AddressFamily.InterNetwork)?.ToString(), e.Address(AddressFamily.InterNetworkV6)?.ToString(),
            record.HostInterface, record.Netns, policy.Enforced.Contains(TrafficDirection.Ingress),
                policy.Enforced.Contains(TrafficDirection.Egress),
            policy.State.Count, policy.SelectingSpecs.Select(s => $"{s.Origin}: {s.Path}").Distinct().ToList(), options.Node,
            record.PolicyAudit || datapath.AuditMode);
    }

    public List<IdentityOutput> Identities() => Engine.Identities.Select(i => new IdentityOutput(i.Id, i.Kind.ToString().ToLowerInvariant(),
        i.Labels.Labels.Select(l => l.ToString()).ToList(),
        Engine.Endpoints.Where(e => e.Identity.Id == i.Id).Select(e => e.Key).Order(StringComparer.Ordinal).ToList())).ToList();

    public BpfPolicyOutput BpfPolicy(string idOrPod)
    {
        var record = FindRecord(idOrPod);
        var entries = policyMap.Dump((uint)record.IfIndex)
            .OrderBy(e => e.Key.Direction).ThenBy(e => e.Key.Identity).ThenBy(e => e.Key.Protocol).ThenBy(e => e.Key.Port)
            .Select(e => new BpfPolicyEntryOutput(e.Key.Direction.ToString(), e.Key.Identity, IdentityName(e.Key.Identity),
                e.Key.PortProtocol, e.Value.Deny == 1 ? "deny" : "allow", e.Key.Kind.ToString(), e.Value.Packets, e.Value.Bytes,
                datapath.Rules.Describe(e.Value.RuleId))).ToList();
        return new BpfPolicyOutput(record.IfIndex, record.Key, entries);
    }

    /// <summary>The kernel's ipcache: every address prefix the datapath maps to an identity (anything else is world).</summary>
    public List<IpCacheOutput> IpCache() => datapath.IpCache.Dump()
        .OrderBy(e => e.Prefix.BaseAddress.AddressFamily).ThenBy(e => Convert.ToHexString(e.Prefix.BaseAddress.GetAddressBytes()),
            StringComparer.Ordinal).ThenBy(e => e.Prefix.PrefixLength)
        .Select(e => new IpCacheOutput(e.Prefix.ToString(), e.Identity, IdentityName(e.Identity))).ToList();

    /// <summary>Removes tracked connections (of one endpoint, or all): their next packets meet policy as new ones.</summary>
    public ConntrackFlushOutput FlushConntrack(string? endpoint)
    {
        var removed = datapath.Conntrack.Flush(EndpointIfIndex(endpoint));
        datapath.AdvanceGeneration();
        return new(removed);
    }

    private uint? EndpointIfIndex(string? endpoint) =>
        endpoint is null ? null : (uint)FindRecord(endpoint).IfIndex;

    /// <summary>
    /// Each endpoint's use of its own conntrack tables (fullest first): a table at 100% evicts only that endpoint's
    /// oldest connections.
    /// </summary>
    public List<ConntrackUsageOutput> ConntrackUsage(string? endpoint = null)
    {
        var ifIndex = EndpointIfIndex(endpoint);
        var pods = endpoints.Records.Values.ToDictionary(r => (uint)r.IfIndex, r => r.Key);
        return datapath.Conntrack.Usage().Where(u => ifIndex is null || u.IfIndex == ifIndex)
            .Select(u => new ConntrackUsageOutput(pods.GetValueOrDefault(u.IfIndex) ?? $"ifindex {u.IfIndex}", u.IPv4, u.IPv6, u.Capacity,
                u.Capacity == 0 ? 0 : Math.Round(100.0 * Math.Max(u.IPv4, u.IPv6) / u.Capacity, 2), u.MemoryBytes))
            .OrderByDescending(u => u.PercentFull).ThenBy(u => u.Endpoint, StringComparer.Ordinal).ToList();
    }

    public List<ConntrackOutput> Conntrack(string? endpoint = null)
    {
        var now = KernelTicks.Now();
        var ifIndex = EndpointIfIndex(endpoint);
        var pods = endpoints.Records.Values.ToDictionary(r => (uint)r.IfIndex, r => r.Key);
        return datapath.Conntrack.Entries().Where(e => ifIndex is null || e.Key.IfIndex == ifIndex).Select(e =>
        {
            var (k, v) = (e.Key, e.Value);
            var (src, sport, dst, dport) = v.OpenedLo == 1 ? (k.Lo, k.LoPort, k.Hi, k.HiPort) : (k.Hi, k.HiPort, k.Lo, k.LoPort);
            var endpoint = pods.GetValueOrDefault(k.IfIndex) ?? $"ifindex {k.IfIndex}";
            var proto = IpProtocol.Name(k.Protocol);
            string Addr(IPAddress a, ushort port) => IpProtocol.IsIcmp(k.Protocol) ? a.ToString()
                : a.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{a}]:{port}" : $"{a}:{port}";
            var flags = new List<string>();
            if ((v.Flags & ConntrackValue.SeenReply) != 0)
            {
                flags.Add("replied");
            }

            if ((v.Flags & ConntrackValue.SeenRst) != 0)
            {
                flags.Add("rst");
            }

            if ((v.Flags & (ConntrackValue.SeenFinForward | ConntrackValue.SeenFinReverse)) != 0)
            {
                flags.Add("fin");
            }

            var id = IpProtocol.IsIcmp(k.Protocol) ? $" type={dport} id={sport}" : ""; // the request's type and identifier
            return new ConntrackOutput(endpoint, proto, Addr(src, sport), Addr(dst, dport) + id, WireNames.Of((WireDirection)v.Direction),
                now is { } n ? Math.Round(ConntrackTable.SecondsSince(v.Created, n), 1) : null, now is { } m
                    ? Math.Round(ConntrackTable.SecondsSince(v.LastSeen, m), 1) : null, v.Packets, v.Bytes, string.Join(",", flags));
        }).OrderBy(c => c.Endpoint, StringComparer.Ordinal).ToList();
    }

    /// <summary>
    /// The flow ring's events as flows: each side named by the endpoint (the pod whose veth saw it) and the peer (the pod
    /// that has the address, else the identity's labels), as the engine knows them now.
    /// </summary>
    public FlowsResponse Flows(Monitoring.FlowRing? ring)
    {
        if (ring is null)
        {
            throw new AgentInputException("the flow ring is off (the agent runs with --flow-ring 0)");
        }
        var byAddress = new Dictionary<System.Net.IPAddress, Endpoint>();
        foreach (var e in Engine.Endpoints)
        {
            foreach (var address in e.Addresses)
            {
                byAddress[address] = e;
            }
        }
        FlowEndpoint Side(Endpoint? pod, uint identity)
        {
            if (pod is not null)
            {
                return new FlowEndpoint(pod.Identity.Id, pod.Pod.Namespace, pod.Pod.Name, pod.Labels.Labels.Select(l
                    => l.ToString()).ToList());
            }
            var labels = Engine.IdentityAllocator.Get(identity)?.Labels.Labels.Select(l => l.ToString()).ToList() ?? [];
            return new FlowEndpoint(identity, null, null, labels);
        }
        var flows = new List<Flow>();
        foreach (var (time, e) in ring.Snapshot())
        {
            var local = endpoints.KeyOf(e.IfIndex) is { } key ? Engine.FindEndpoint(key) : null;
            var ingress = (WireDirection)e.Direction == WireDirection.Ingress;
            var peerAddress = ingress ? e.SourceAddress : e.DestinationAddress;
            var peer = Side(byAddress.GetValueOrDefault(peerAddress), e.PeerIdentity);
            var self = Side(local, local?.Identity.Id ?? 0);
            // An audited packet keeps the reason policy would have dropped it for.
            var type = (EventType)e.Type;
            var verdict = type switch { EventType.Drop => "DROPPED", EventType.Audit => "AUDIT", _ => "FORWARDED" };
            var trace = type switch
            {
                EventType.Trace => FlowNames.Trace((TraceReason)e.Reason),
                EventType.Verdict or EventType.Audit => "NEW",
                _ => null,
            };
            var l4 = e.Protocol switch
            {
                IpProtocol.Tcp => new FlowL4(Tcp: new FlowPorts(e.SourcePort, e.DestinationPort)),
                IpProtocol.Udp => new FlowL4(Udp: new FlowPorts(e.SourcePort, e.DestinationPort)),
                IpProtocol.Sctp => new FlowL4(Sctp: new FlowPorts(e.SourcePort, e.DestinationPort)),
                IpProtocol.Icmp => new FlowL4(IcmpV4: new FlowIcmp(e.IcmpType, e.IcmpCode)),
                IpProtocol.IcmpV6 => new FlowL4(IcmpV6: new FlowIcmp(e.IcmpType, e.IcmpCode)),
                _ => new FlowL4(),
            };
            flows.Add(new Flow(time, verdict, verdict == "FORWARDED" ? null : DropReasons.Describe((DropReason)e.Reason),
                new FlowIp(e.SourceAddress.ToString(), e.DestinationAddress.ToString(), e.Family == 4 ? "IPv4" : "IPv6"), l4,
                ingress ? peer : self, ingress ? self : peer, ingress ? "INGRESS" : "EGRESS",
                WireNames.Of((WireMatchKind)e.MatchKind), e.RuleId == 0 ? null : datapath.Rules.Describe(e.RuleId), trace,
                trace is null ? null : trace == "REPLY"));
        }
        return new FlowsResponse(flows, ring.Capacity, datapath.EventsLost());
    }

    /// <summary>What the monitor shows for an interface index and an identity.</summary>
    public (string Endpoint, string Peer) Describe(uint ifIndex, uint identity) =>
        (endpoints.KeyOf(ifIndex) ?? $"ifindex {ifIndex}", IdentityName(identity));

    private string IdentityName(uint identity)
    {
        if (identity == ReservedIdentities.Any)
        {
            return "ANY";
        }
        var pods = Engine.Endpoints.Where(e => e.Identity.Id == identity).Select(e => e.Key).Order(StringComparer.Ordinal).ToList();
        if (pods.Count > 0)
        {
            return string.Join(",", pods.Take(3)) + (pods.Count > 3 ? $",+{pods.Count - 3}" : "");
        }
        return Engine.IdentityAllocator.Get(identity)?.Labels.Canonical ?? "?";
    }
}
