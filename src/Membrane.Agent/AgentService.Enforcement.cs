using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Sync;
using Membrane.Policy.Identity;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;

namespace Membrane.Agent;

/// <summary>Bringing sandbox and kernel in line with the engine: planning, map writes, identity moves, conntrack, persistence.</summary>
public sealed partial class AgentService
{
    /// <summary>What a change will write: the resolved dirty endpoints and the ipcache, checked against map sizes.</summary>
    private sealed record RegenerationPlan(IReadOnlyList<EndpointPolicy> Dirty, IReadOnlyList<(IPNetwork Prefix, uint Identity)> IpCache);

    /// <summary>Resolves what changed and checks that it fits the maps; nothing is written, so a refusal changes nothing.</summary>
    private RegenerationPlan Plan()
    {
        var dirty = _engine.ResolveDirty();
        var host = new[] { AgentOptions.GatewayIPv4, _options.NodeIPv4, _options.NodeIPv6 }
            .Select(a => (new IPNetwork(a, a.AddressFamily == AddressFamily.InterNetwork ? 32 : 128), ReservedIdentities.Host));
        var ipcache = _engine.IpCache().Concat(host).ToList();
        try
        {
            // Pods not created yet have no interface: a placeholder index that no real interface has counts them.
            var placeholder = uint.MaxValue;
            Datapath.Policy.CheckCapacity(dirty.Select(p => (_records.TryGetValue(p.Endpoint.Key, out var r) ? (uint)r.IfIndex : placeholder--, p.Endpoint.Key, p.State.Count)));
            Datapath.IpCache.CheckCapacity(ipcache);
        }
        catch (MapCapacityException e)
        {
            throw new AgentInputException($"{e.Message}; nothing was changed");
        }
        return new RegenerationPlan(dirty, ipcache);
    }

    /// <summary>
    /// Brings the sandbox and the kernel in line with the engine: pods created or removed, dirty endpoints' policy,
    /// the ipcache, and programs where missing. True when pods were created (their records need saving).
    /// </summary>
    private bool Enforce(RegenerationPlan plan, bool attachAll)
    {
        var watch = Stopwatch.StartNew();
        foreach (var key in _records.Keys.Where(k => _engine.FindEndpoint(k) is null).ToList())
        {
            RemovePodResources(key);
        }
        var created = false;
        foreach (var endpoint in _engine.Endpoints.Where(e => !_records.ContainsKey(e.Key)).ToList())
        {
            _records[endpoint.Key] = _pods.Create(endpoint.Key, endpoint.Addresses);
            created = true;
            _servers.Start(endpoint.Pod, _records[endpoint.Key].Netns);
        }
        // Make before break for pods whose identity changes (a label change): until the ipcache says Y, their
        // packets still carry the old identity X, so the maps first hold Y's new entries under X too, then the
        // ipcache switches, then the X copies go. Those copies give X's packets exactly the new verdict of Y.
        var aliases = DepartingIdentities(plan.IpCache);
        var changed = new Dictionary<uint, MapState>();
        var aliased = new List<(uint IfIndex, MapState State)>();
        foreach (var policy in plan.Dirty)
        {
            if (!_records.TryGetValue(policy.Endpoint.Key, out var record))
            {
                continue;
            }
            var state = WithAliases(policy.State, aliases);
            if (Datapath.Policy.Sync((uint)record.IfIndex, state).Changes > 0)
            {
                changed[(uint)record.IfIndex] = policy.State;
            }
            if (!ReferenceEquals(state, policy.State))
            {
                aliased.Add(((uint)record.IfIndex, policy.State));
            }
        }
        Datapath.IpCache.Sync(plan.IpCache);
        foreach (var (ifIndex, state) in aliased)
        {
            Datapath.Policy.Sync(ifIndex, state);
        }
        var toAttach = _records.Values.Where(r => attachAll || !_attached.Contains(r.IfIndex)).ToList();
        if (toAttach.Count > 0)
        {
            // The addresses a pod may send from go in before its programs: without them it may send nothing.
            foreach (var record in toAttach)
            {
                Datapath.Endpoints.Set((uint)record.IfIndex, record.Addresses.Select(IPAddress.Parse));
            }
            NetworkNamespace.Run(_node.Name, () =>
            {
                foreach (var record in toAttach)
                {
                    TcAttachment.Attach(record.IfIndex, TcDirection.Ingress, Datapath.FromPod);
                    TcAttachment.Attach(record.IfIndex, TcDirection.Egress, Datapath.ToPod);
                }
            });
            _attached.UnionWith(toAttach.Select(r => r.IfIndex));
        }
        if (changed.Count > 0)
        {
            RevalidateConnections(changed);
        }
        LastRegenerationMilliseconds = watch.Elapsed.TotalMilliseconds;
        return created;
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
        foreach (var (prefix, identity) in Datapath.IpCache.Written())
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
    /// </summary>
    private void RevalidateConnections(Dictionary<uint, MapState> changed)
    {
        foreach (var (key, value) in Datapath.Conntrack.Entries().ToList())
        {
            if (!changed.TryGetValue(key.IfIndex, out var state))
            {
                continue;
            }
            var (source, destination, port) = value.OpenedLo == 1 ? (key.Lo, key.Hi, key.HiPort) : (key.Hi, key.Lo, key.LoPort);
            var direction = (TrafficDirection)value.Direction;
            var peer = _engine.IdentityOf(direction == TrafficDirection.Egress ? destination : source);
            // An ICMP query's key carries the request's type where a port would be (see icmp_ports in bpf/parse.h).
            var keyPort = IpProtocol.IsIcmp(key.Protocol) ? (ushort)(port << 8) : port;
            if (!state.Lookup(direction, peer, key.Protocol, keyPort).Allowed)
            {
                Datapath.Conntrack.Delete(key);
            }
        }
    }

    private void Save()
    {
        try
        {
            SaveState();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"cannot write the state file {_store.FilePath}: {e.Message}; the change was undone", e);
        }
    }

    private void SaveState() => _store.Save(new PersistedState
    {
        Objects = new(_objects),
        Endpoints = new(_records),
        Identities = _engine.Identities.Where(i => i.Kind == IdentityKind.Pod).Select(i => new IdentityRecord(i.Id, i.Labels.Canonical)).ToList(),
        Revision = _revision,
    });
}
