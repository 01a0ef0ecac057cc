using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Endpoints;
using Membrane.Datapath;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;
using Membrane.Policy.Identity;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;

namespace Membrane.Agent.Regeneration;

/// <summary>What a change will write: the resolved dirty endpoints and the ipcache, checked against map sizes.</summary>
public sealed record RegenerationPlan(IReadOnlyList<EndpointPolicy> Dirty, IReadOnlyList<(IPNetwork Prefix, uint Identity)> IpCache);

/// <summary>
/// Turns the engine's resolved policy into kernel state: plans (resolve the dirty endpoints, check capacity), then
/// synchronises the policy maps and the ipcache without a window that allows what old and new policy both deny,
/// attaches programs where missing, and forgets connections the new policy denies.
/// </summary>
public sealed class Regenerator(PolicyDatapath datapath, PolicyMapSynchronizer policyMap, EndpointManager endpoints)
{
    /// <summary>
    /// Resolves what changed and checks that it fits the maps; nothing is written, so a refusal changes nothing.
    /// <paramref name="remoteNodes"/> are the other nodes' own addresses (cluster mode): the remote-node identity.
    /// </summary>
    public RegenerationPlan Plan(PolicyEngine engine, IReadOnlyList<IPAddress> remoteNodes)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(remoteNodes);
        var dirty = engine.ResolveDirty();
        var host = endpoints.Runtime.HostPrefixes.Select(p => (p, ReservedIdentities.Host));
        var remote = remoteNodes
            .Select(a => (new IPNetwork(a, a.AddressFamily == AddressFamily.InterNetwork ? 32 : 128), ReservedIdentities.RemoteNode));
        var ipcache = OnePerPrefix(engine.IpCache().Concat(remote).Concat(host));
        try
        {
            // Pods not created yet have no interface: a placeholder index that no real interface has counts them.
            var placeholder = uint.MaxValue;
            policyMap.CheckCapacity(dirty.Select(p =>
                (endpoints.Find(p.Endpoint.Key) is { } r ? (uint)r.IfIndex : placeholder--, p.Endpoint.Key, p.State.Count)));
            datapath.IpCache.CheckCapacity(ipcache);
        }
        catch (MapCapacityException e)
        {
            // The caller's change does not fit the maps: refused before anything was written.
            throw new AgentInputException($"{e.Message}; nothing was changed");
        }
        return new RegenerationPlan(dirty, ipcache);
    }

    /// <summary>
    /// One entry per prefix, the later source winning, in the order the sources come: a policy's CIDR equal to the
    /// world prefix (toCIDR 0.0.0.0/0) over world, a pod's address over a CIDR, a remote node's and the host's own
    /// addresses over everything — the precedence the engine's trace uses too (<see cref="PolicyEngine.IdentityOf"/>).
    /// </summary>
    public static List<(IPNetwork Prefix, uint Identity)> OnePerPrefix(IEnumerable<(IPNetwork Prefix, uint Identity)> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var position = new Dictionary<IPNetwork, int>();
        var list = new List<(IPNetwork Prefix, uint Identity)>();
        foreach (var entry in entries)
        {
            if (position.TryGetValue(entry.Prefix, out var at))
            {
                list[at] = entry;
            }
            else
            {
                position[entry.Prefix] = list.Count;
                list.Add(entry);
            }
        }
        return list;
    }

    /// <summary>Writes the plan: policy of dirty endpoints, the ipcache, programs where missing, then conntrack.</summary>
    public void Regenerate(PolicyEngine engine, RegenerationPlan plan, bool attachAll)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(plan);
        if (plan.IpCache.GroupBy(e => e.Prefix).FirstOrDefault(g => g.Count() > 1) is { } twice)
        {
            // A plan is built one entry per prefix (OnePerPrefix); one that is not would write an order-dependent map.
            throw new AgentInputException($"the plan gives the prefix {twice.Key} {twice.Count()} identities " +
                $"({string.Join(", ", twice.Select(e => e.Identity))}); nothing was changed");
        }
        // Make before break for pods whose identity changes (a label change): until the ipcache says Y, their
        // packets still carry the old identity X, so the maps first hold Y's new entries under X too, then the
        // ipcache switches, then the X copies go. Those copies give X's packets exactly the new verdict of Y.
        var aliases = DepartingIdentities(plan.IpCache);
        var changed = new Dictionary<uint, MapState>();
        var aliased = new List<(uint IfIndex, MapState State)>();
        foreach (var policy in plan.Dirty)
        {
            if (endpoints.Find(policy.Endpoint.Key) is not { } record)
            {
                continue;
            }
            var state = WithAliases(policy.State, aliases);
            if (policyMap.Sync((uint)record.IfIndex, state).Changes > 0)
            {
                changed[(uint)record.IfIndex] = policy.State;
            }
            if (!ReferenceEquals(state, policy.State))
            {
                aliased.Add(((uint)record.IfIndex, policy.State));
            }
        }
        datapath.IpCache.Sync(plan.IpCache);
        foreach (var (ifIndex, state) in aliased)
        {
            policyMap.Sync(ifIndex, state);
        }
        endpoints.Attach(attachAll);
        if (changed.Count > 0)
        {
            RevalidateConnections(engine, changed);
        }
        // Last, with every map written and every connection the change denies forgotten: from_pod's shortcut past a
        // local destination's check (earned under the old generation) ends, and each connection meets it again.
        datapath.AdvanceGeneration();
    }

    /// <summary>
    /// Identities the ipcache maps now that the new ipcache no longer has, each with the one identity its addresses
    /// move to (X → Y). An identity whose addresses go to several identities, or away, has no alias.
    /// </summary>
    private Dictionary<uint, uint> DepartingIdentities(IReadOnlyList<(IPNetwork Prefix, uint Identity)> next)
    {
        var nextByPrefix = next.ToDictionary(e => e.Prefix, e => e.Identity);
        var staying = next.Select(e => e.Identity).ToHashSet();
        var moves = new Dictionary<uint, HashSet<uint>>();
        foreach (var (prefix, identity) in datapath.IpCache.Written())
        {
            if (!staying.Contains(identity) && nextByPrefix.TryGetValue(prefix, out var successor))
            {
                if (!moves.TryGetValue(identity, out var successors))
                {
                    successors = [];
                    moves[identity] = successors;
                }
                successors.Add(successor);
            }
        }
        return moves.Where(m => m.Value.Count == 1).ToDictionary(m => m.Key, m => m.Value.Single());
    }

    /// <summary>The state plus, for each alias X → Y, a copy of every entry of Y under X.</summary>
    private static MapState WithAliases(MapState state, Dictionary<uint, uint> aliases)
    {
        if (aliases.Count == 0)
        {
            return state;
        }
        var byTarget = aliases.GroupBy(a => a.Value).ToDictionary(g => g.Key, g => g.Select(a => a.Key).ToList());
        Dictionary<PolicyKey, PolicyEntry>? entries = null;
        foreach (var (key, entry) in state.Entries)
        {
            if (byTarget.TryGetValue(key.Identity, out var departing))
            {
                entries ??= new Dictionary<PolicyKey, PolicyEntry>(state.Entries);
                foreach (var old in departing)
                {
                    entries.TryAdd(key with { Identity = old }, entry);
                }
            }
        }
        return entries is null ? state : new MapState(entries);
    }

    /// <summary>
    /// Connections opened under the old policy that the new one denies are forgotten, so their next packet meets
    /// the new policy: a narrowing change takes effect on established traffic too, not only on new connections.
    /// Endpoints in audit mode keep theirs: audit lets them through anyway, and each was reported when it began.
    /// Also called when an endpoint leaves audit mode, for the connections audit admitted. The first fragments'
    /// verdicts of the changed endpoints are forgotten with them (a datagram in flight loses its later fragments).
    /// </summary>
    public void RevalidateConnections(PolicyEngine engine, IReadOnlyDictionary<uint, MapState> changed)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(changed);
        if (datapath.AuditMode)
        {
            return;
        }
        var audited = new Dictionary<uint, bool>();
        datapath.FlushFragments(changed.Keys.Where(ifIndex => !datapath.Endpoints.IsAudited(ifIndex)).ToHashSet());
        foreach (var (key, value) in datapath.Conntrack.Entries().ToList())
        {
            if (!changed.TryGetValue(key.IfIndex, out var state))
            {
                continue;
            }
            if (!audited.TryGetValue(key.IfIndex, out var isAudited))
            {
                audited[key.IfIndex] = isAudited = datapath.Endpoints.IsAudited(key.IfIndex);
            }
            if (isAudited)
            {
                continue;
            }
            var (source, destination, port) = value.OpenedLo == 1 ? (key.Lo, key.Hi, key.HiPort) : (key.Hi, key.Lo, key.LoPort);
            var direction = PolicyMapSynchronizer.FromWire((WireDirection)value.Direction);
            var peer = engine.IdentityOf(direction == TrafficDirection.Egress ? destination : source);
            // An ICMP query's key carries the request's type where a port would be (see icmp_ports in bpf/parse.h).
            var keyPort = IpProtocol.IsIcmp(key.Protocol) ? (ushort)(port << 8) : port;
            if (!state.Lookup(direction, peer, key.Protocol, keyPort).Allowed)
            {
                datapath.Conntrack.Delete(key);
            }
        }
        datapath.AdvanceGeneration(); // the shortcut past these endpoints' checks is earned again (see Regenerate)
    }
}
