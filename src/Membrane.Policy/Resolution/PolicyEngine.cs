using System.Net;
using Membrane.Policy.Api;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>
/// The policy repository and resolver. Holds policies, namespaces and pods; allocates identities; keeps a selector
/// cache; and resolves each endpoint into the <see cref="MapState"/> the datapath enforces. Changes are incremental:
/// a policy change re-resolves only the endpoints its subjects select, an identity change only the endpoints whose
/// rules use a selector whose selection changed. Not thread-safe: the owner serialises calls.
/// </summary>
public sealed class PolicyEngine
{
    private readonly IdentityAllocator _identities = new();
    private readonly PodAddressAllocator _addresses;
    private readonly SelectorCache _cache = new();
    private readonly Dictionary<string, StoredPolicy> _policies = new(StringComparer.Ordinal);
    private readonly Dictionary<string, NamespaceManifest> _namespaces = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Endpoint> _endpoints = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, HashSet<string>> _endpointsByIdentity = [];
    private readonly Dictionary<string, EndpointPolicy> _resolved = new(StringComparer.Ordinal);
    private readonly Dictionary<string, HashSet<string>> _dependents = new(StringComparer.Ordinal);
    private readonly Dictionary<string, HashSet<string>> _dependencies = new(StringComparer.Ordinal);
    private readonly HashSet<string> _namedPortDependents = new(StringComparer.Ordinal);
    private readonly HashSet<string> _dirty = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SecurityIdentity> _cidrIdentities = new(StringComparer.Ordinal);
    private readonly Dictionary<IPAddress, uint> _identityByAddress = [];

    private sealed record StoredPolicy(PolicyDocument Document, IReadOnlyList<string> SelectorKeys, IReadOnlyList<SecurityIdentity> CidrIdentities);

    public PolicyEngine(PodAddressAllocator? addresses = null)
    {
        _addresses = addresses ?? new PodAddressAllocator();
        foreach (var reserved in ReservedIdentities.All)
        {
            _cache.AddIdentity(reserved);
        }
    }

    /// <summary>Increases with every change to policies or workloads.</summary>
    public long Revision { get; private set; }

    public IEnumerable<PolicyDocument> Policies => _policies.Values.Select(p => p.Document);

    public IEnumerable<NamespaceManifest> Namespaces => _namespaces.Values;

    public IEnumerable<Endpoint> Endpoints => _endpoints.Values;

    public IEnumerable<SecurityIdentity> Identities => _identities.All;

    public IdentityAllocator IdentityAllocator => _identities;

    /// <summary>How many endpoints were resolved since the counter was last read (for tests of incrementality).</summary>
    public int ResolutionCount { get; private set; }

    /// <summary>Selector tests made by the selector cache (see <see cref="SelectorCache.Evaluations"/>).</summary>
    public long SelectorEvaluations => _cache.Evaluations;

    public Endpoint? FindEndpoint(string key) => _endpoints.GetValueOrDefault(key);

    public PolicyDocument? FindPolicy(string origin) => _policies.GetValueOrDefault(origin)?.Document;

    /// <summary>Applies a whole manifest set: namespaces first, then pods, then policies.</summary>
    public void Apply(ManifestSet set)
    {
        foreach (var ns in set.Namespaces)
        {
            UpsertNamespace(ns);
        }
        foreach (var pod in set.Pods)
        {
            UpsertPod(pod);
        }
        foreach (var policy in set.Policies)
        {
            UpsertPolicy(policy);
        }
    }

    // ---- policies ----

    public void UpsertPolicy(PolicyDocument document)
    {
        var key = document.Origin.ToString();
        var cidrIdentities = new List<SecurityIdentity>();
        foreach (var cidr in document.Rules.SelectMany(r => r.Peers ?? []).OfType<CidrPeer>())
        {
            foreach (var prefix in cidr.Except.Prepend(cidr.Cidr))
            {
                cidrIdentities.Add(AcquireCidrIdentity(prefix));
            }
        }
        var keys = new List<string>();
        foreach (var spec in document.Specs)
        {
            keys.Add(AcquireSubject(spec.Subject));
            foreach (var rule in spec.Rules)
            {
                keys.AddRange((rule.Peers ?? []).Select(AcquirePeer));
                keys.AddRange(rule.Requires.Select(r => AcquirePeer(new EndpointPeer(r))));
            }
        }
        var old = _policies.GetValueOrDefault(key);
        _policies[key] = new StoredPolicy(document, keys, cidrIdentities);
        MarkSelected(document);
        if (old is not null)
        {
            MarkSelected(old.Document);
            ReleasePolicy(old);
        }
        Revision++;
    }

    public bool RemovePolicy(string origin)
    {
        if (!_policies.Remove(origin, out var old))
        {
            return false;
        }
        MarkSelected(old.Document);
        ReleasePolicy(old);
        Revision++;
        return true;
    }

    private void ReleasePolicy(StoredPolicy policy)
    {
        foreach (var key in policy.SelectorKeys)
        {
            _cache.Release(key);
        }
        foreach (var identity in policy.CidrIdentities)
        {
            if (_identities.Release(identity))
            {
                _cidrIdentities.Remove(identity.Prefix!.Value.ToString());
                MarkChanged(_cache.RemoveIdentity(identity));
            }
        }
    }

    private SecurityIdentity AcquireCidrIdentity(IPNetwork prefix)
    {
        var labels = new LabelSet([new Label(LabelSource.Cidr, prefix.ToString(), ""), new Label(LabelSource.Reserved, "world", "")]);
        var (identity, created) = _identities.Acquire(labels, IdentityKind.Cidr, prefix);
        if (created)
        {
            _cidrIdentities[prefix.ToString()] = identity;
            MarkChanged(_cache.AddIdentity(identity));
        }
        return identity;
    }

    private void MarkSelected(PolicyDocument document)
    {
        foreach (var spec in document.Specs)
        {
            foreach (var id in _cache.Selected(SelectorCache.SubjectKey(spec.Subject)))
            {
                foreach (var endpoint in _endpointsByIdentity.GetValueOrDefault(id) ?? [])
                {
                    _dirty.Add(endpoint);
                }
            }
        }
    }

    private string AcquireSubject(LabelSelector subject) =>
        _cache.Acquire(SelectorCache.SubjectKey(subject), () => new SelectorCache.Entry(
            SelectorCache.SubjectKey(subject), i => i.Kind == IdentityKind.Pod && subject.Matches(i.Labels), subject.PinnedNamespace));

    private string AcquirePeer(Peer peer)
    {
        var key = SelectorCache.PeerKey(peer);
        return _cache.Acquire(key, () => peer switch
        {
            EndpointPeer e => new SelectorCache.Entry(key, i => MatchesEndpointSelector(e.Selector, i), e.Selector.PinnedNamespace),
            CidrPeer c => new SelectorCache.Entry(key, i => MatchesCidr(c, i), null) { Cidr = c.Cidr },
            EntityPeer { Entity: "all" } => new SelectorCache.Entry(key, _ => true, null) { IsWildcard = true },
            EntityPeer n => new SelectorCache.Entry(key, i => MatchesEntity(n.Entity, i), null),
            _ => throw new ArgumentOutOfRangeException(nameof(peer)),
        });
    }

    /// <summary>Selectors match pods; reserved identities only when the selector names a reserved label.</summary>
    private static bool MatchesEndpointSelector(LabelSelector selector, SecurityIdentity identity) =>
        identity.Kind switch
        {
            IdentityKind.Pod => selector.Matches(identity.Labels),
            IdentityKind.Reserved => selector.Requirements.Any(r => r.Source == LabelSource.Reserved) && selector.Matches(identity.Labels),
            _ => false,
        };

    private static bool MatchesEntity(string entity, SecurityIdentity identity) => entity switch
    {
        "cluster" => identity.Kind == IdentityKind.Pod || ReservedIdentities.ForEntity("cluster").Contains(identity.Id),
        "world" => identity.IsWorld,
        "world-ipv4" => identity.Kind == IdentityKind.Cidr ? identity.Prefix!.Value.BaseAddress.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork : ReservedIdentities.ForEntity(entity).Contains(identity.Id),
        "world-ipv6" => identity.Kind == IdentityKind.Cidr ? identity.Prefix!.Value.BaseAddress.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 : ReservedIdentities.ForEntity(entity).Contains(identity.Id),
        _ => ReservedIdentities.ForEntity(entity).Contains(identity.Id),
    };

    private bool MatchesCidr(CidrPeer peer, SecurityIdentity identity)
    {
        switch (identity.Kind)
        {
            case IdentityKind.Cidr:
                return peer.Contains(identity.Prefix!.Value);
            case IdentityKind.Reserved:
                // A /0 covers everything outside the cluster that no narrower prefix names.
                var v4 = peer.Cidr.BaseAddress.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork;
                return peer.Cidr.PrefixLength == 0 && peer.Except.Count == 0
                    && (identity.Id == ReservedIdentities.World || identity.Id == (v4 ? ReservedIdentities.WorldIPv4 : ReservedIdentities.WorldIPv6));
            default:
                // KNP ipBlock: a pod identity matches when every pod of it has an address inside the block.
                if (!peer.MatchesPods || !_endpointsByIdentity.TryGetValue(identity.Id, out var keys) || keys.Count == 0)
                {
                    return false;
                }
                return keys.All(k => _endpoints[k].Addresses.Any(peer.Contains));
        }
    }

    // ---- workloads ----

    public void UpsertNamespace(NamespaceManifest ns)
    {
        _namespaces[ns.Name] = ns;
        foreach (var endpoint in _endpoints.Values.Where(e => e.Pod.Namespace == ns.Name).ToList())
        {
            UpsertPod(endpoint.Pod);
        }
        Revision++;
    }

    public bool RemoveNamespace(string name)
    {
        if (!_namespaces.Remove(name))
        {
            return false;
        }
        foreach (var endpoint in _endpoints.Values.Where(e => e.Pod.Namespace == name).ToList())
        {
            RemovePod(endpoint.Key);
        }
        Revision++;
        return true;
    }

    /// <summary>Adds or updates a pod; a label change moves it to another identity. Returns the endpoint.</summary>
    public Endpoint UpsertPod(PodManifest pod)
    {
        var old = _endpoints.GetValueOrDefault(pod.Key);
        var addresses = pod.Addresses.Count > 0 ? pod.Addresses : old?.Addresses ?? _addresses.Allocate();
        foreach (var address in addresses)
        {
            _addresses.Reserve(address);
        }
        var labels = Endpoint.DeriveLabels(pod, _namespaces.GetValueOrDefault(pod.Namespace));
        if (old is not null && old.Labels.Equals(labels))
        {
            var same = old with { Pod = pod with { Addresses = addresses }, Addresses = addresses };
            _endpoints[pod.Key] = same;
            foreach (var address in old.Addresses)
            {
                _identityByAddress.Remove(address);
            }
            foreach (var address in addresses)
            {
                _identityByAddress[address] = old.Identity.Id;
            }
            _dirty.Add(pod.Key);
            if (!old.Addresses.SequenceEqual(addresses))
            {
                foreach (var address in old.Addresses.Except(addresses))
                {
                    _addresses.Release(address);
                }
                // ipBlock selectors match pods by address.
                MarkChanged(_cache.Reevaluate(old.Identity));
            }
            MarkNamedPortDependents();
            Revision++;
            return same;
        }
        if (old is not null)
        {
            DetachEndpoint(old, releaseAddresses: false);
        }
        var (identity, created) = _identities.Acquire(labels, IdentityKind.Pod);
        var endpoint = new Endpoint(pod with { Addresses = addresses }, labels, identity, addresses);
        _endpoints[pod.Key] = endpoint;
        foreach (var address in addresses)
        {
            _identityByAddress[address] = identity.Id;
        }
        if (!_endpointsByIdentity.TryGetValue(identity.Id, out var members))
        {
            members = new HashSet<string>(StringComparer.Ordinal);
            _endpointsByIdentity[identity.Id] = members;
        }
        members.Add(pod.Key);
        MarkChanged(created ? _cache.AddIdentity(identity) : _cache.Reevaluate(identity));
        _dirty.Add(pod.Key);
        MarkNamedPortDependents();
        Revision++;
        return endpoint;
    }

    public bool RemovePod(string key)
    {
        if (!_endpoints.TryGetValue(key, out var endpoint))
        {
            return false;
        }
        DetachEndpoint(endpoint, releaseAddresses: true);
        MarkNamedPortDependents();
        Revision++;
        return true;
    }

    private void DetachEndpoint(Endpoint endpoint, bool releaseAddresses)
    {
        _endpoints.Remove(endpoint.Key);
        _resolved.Remove(endpoint.Key);
        foreach (var address in endpoint.Addresses)
        {
            _identityByAddress.Remove(address);
        }
        _dirty.Remove(endpoint.Key);
        ForgetDependencies(endpoint.Key);
        _namedPortDependents.Remove(endpoint.Key);
        if (releaseAddresses)
        {
            foreach (var address in endpoint.Addresses)
            {
                _addresses.Release(address);
            }
        }
        var members = _endpointsByIdentity[endpoint.Identity.Id];
        members.Remove(endpoint.Key);
        if (members.Count == 0)
        {
            _endpointsByIdentity.Remove(endpoint.Identity.Id);
        }
        if (_identities.Release(endpoint.Identity))
        {
            MarkChanged(_cache.RemoveIdentity(endpoint.Identity));
        }
        else
        {
            MarkChanged(_cache.Reevaluate(endpoint.Identity));
        }
    }

    private void MarkChanged(List<string> changedKeys)
    {
        foreach (var key in changedKeys)
        {
            if (_dependents.TryGetValue(key, out var endpoints))
            {
                _dirty.UnionWith(endpoints);
            }
        }
    }

    private void MarkNamedPortDependents() => _dirty.UnionWith(_namedPortDependents);

    private void ForgetDependencies(string endpoint)
    {
        if (_dependencies.Remove(endpoint, out var keys))
        {
            foreach (var key in keys)
            {
                if (_dependents.TryGetValue(key, out var set))
                {
                    set.Remove(endpoint);
                }
            }
        }
    }

    // ---- resolution ----

    /// <summary>The endpoints whose policy changed since they were last resolved.</summary>
    public IReadOnlyCollection<string> Dirty => _dirty;

    public EndpointPolicy Resolve(string endpointKey)
    {
        var endpoint = _endpoints.GetValueOrDefault(endpointKey)
            ?? throw new KeyNotFoundException($"no pod {endpointKey}");
        if (!_dirty.Contains(endpointKey) && _resolved.TryGetValue(endpointKey, out var cached))
        {
            return cached;
        }
        var resolved = Compute(endpoint);
        _resolved[endpointKey] = resolved;
        _dirty.Remove(endpointKey);
        return resolved;
    }

    /// <summary>
    /// Which endpoints this node enforces; only they are resolved by <see cref="ResolveDirty"/>. Pods of other
    /// nodes still have identities and are peers. All pods are local in the single-node sandbox.
    /// </summary>
    public Predicate<string> IsLocal { get; init; } = _ => true;

    /// <summary>Resolves every dirty local endpoint and returns those that were recomputed.</summary>
    public IReadOnlyList<EndpointPolicy> ResolveDirty()
    {
        _dirty.RemoveWhere(k => !IsLocal(k));
        return _dirty.ToList().Select(Resolve).ToList();
    }

    public IReadOnlyList<EndpointPolicy> ResolveAll() => _endpoints.Keys.Order(StringComparer.Ordinal).Select(Resolve).ToList();

    private EndpointPolicy Compute(Endpoint endpoint)
    {
        ResolutionCount++;
        ForgetDependencies(endpoint.Key);
        _namedPortDependents.Remove(endpoint.Key);
        var dependencies = new HashSet<string>(StringComparer.Ordinal);
        var specs = _policies.Values.SelectMany(p => p.Document.Specs)
            .Where(s => _cache.Selected(SelectorCache.SubjectKey(s.Subject)).Contains(endpoint.Identity.Id))
            .ToList();
        var builder = new MapStateBuilder();
        var enforced = new HashSet<TrafficDirection>();
        foreach (var direction in new[] { TrafficDirection.Ingress, TrafficDirection.Egress })
        {
            if (specs.Any(s => s.Enforces.Contains(direction)))
            {
                enforced.Add(direction);
            }
            else
            {
                builder.Add(PolicyKey.Create(direction, ReservedIdentities.Any, IpProtocol.Any, 0, 0), RuleAction.Allow,
                    $"no policy enforces {direction.ToString().ToLowerInvariant()} on this endpoint");
            }
            var rules = specs.SelectMany(s => s.Rules).Where(r => r.Direction == direction).ToList();
            HashSet<uint>? required = null;
            foreach (var requirement in rules.SelectMany(r => r.Requires))
            {
                var key = SelectorCache.RequiresKey(requirement);
                dependencies.Add(key);
                var selected = _cache.Selected(key);
                required = required is null ? [.. selected] : [.. required.Intersect(selected)];
            }
            foreach (var rule in rules.Where(r => !r.AllowsNothing))
            {
                AddRule(builder, endpoint, rule, required, dependencies);
            }
        }
        foreach (var key in dependencies)
        {
            if (!_dependents.TryGetValue(key, out var set))
            {
                set = new HashSet<string>(StringComparer.Ordinal);
                _dependents[key] = set;
            }
            set.Add(endpoint.Key);
        }
        _dependencies[endpoint.Key] = dependencies;
        return new EndpointPolicy(endpoint, builder.Build(), specs, enforced, Revision);
    }

    private void AddRule(MapStateBuilder builder, Endpoint endpoint, PolicyRule rule, HashSet<uint>? required, HashSet<string> dependencies)
    {
        var peers = new HashSet<uint>();
        if (rule.Peers is null)
        {
            peers.Add(ReservedIdentities.Any);
        }
        else
        {
            foreach (var peer in rule.Peers)
            {
                var key = SelectorCache.PeerKey(peer);
                dependencies.Add(key);
                if (_cache.IsWildcard(key))
                {
                    peers.Add(ReservedIdentities.Any);
                }
                else
                {
                    peers.UnionWith(_cache.Selected(key));
                }
            }
        }
        if (rule.Action == RuleAction.Allow && required is not null)
        {
            // fromRequires/toRequires narrow every allowed peer, the "any peer" wildcard included.
            if (peers.Remove(ReservedIdentities.Any))
            {
                peers.UnionWith(required);
            }
            peers.IntersectWith(required);
        }
        var reference = rule.Reference;
        if (rule.Direction == TrafficDirection.Egress && peers.Contains(ReservedIdentities.Any) && rule.Ports?.Any(p => p.Name is not null) == true)
        {
            // An egress named port means the port of that name on the destination: to "any peer" it can only
            // reach the pods that declare it, so the wildcard expands into their identities for named ports.
            var named = rule with { Icmps = null, Ports = rule.Ports.Where(p => p.Name is not null).ToList() };
            foreach (var identity in _endpointsByIdentity.Keys)
            {
                foreach (var (protocol, port, prefix) in L4Keys(endpoint, named, identity))
                {
                    builder.Add(PolicyKey.Create(rule.Direction, identity, protocol, port, prefix), rule.Action, reference);
                }
            }
            rule = rule with { Ports = rule.Ports.Where(p => p.Name is null).ToList() };
            if (rule.Ports.Count == 0 && rule.Icmps is null)
            {
                return;
            }
        }
        foreach (var peer in peers)
        {
            foreach (var (protocol, port, prefix) in L4Keys(endpoint, rule, peer))
            {
                builder.Add(PolicyKey.Create(rule.Direction, peer, protocol, port, prefix), rule.Action, reference);
            }
        }
    }

    /// <summary>The protocol/port/ICMP part of a rule's keys for one peer; named ports resolve on the destination.</summary>
    private IEnumerable<(byte Protocol, ushort Port, byte Prefix)> L4Keys(Endpoint endpoint, PolicyRule rule, uint peer)
    {
        if (rule.IsL3Only)
        {
            yield return (IpProtocol.Any, 0, 0);
            yield break;
        }
        foreach (var icmp in rule.Icmps ?? [])
        {
            yield return icmp.Code is { } code
                ? (icmp.Protocol, (ushort)(icmp.Type << 8 | code), (byte)16)
                : (icmp.Protocol, (ushort)(icmp.Type << 8), (byte)8);
        }
        foreach (var port in rule.Ports ?? [])
        {
            if (port.Name is not null)
            {
                foreach (var resolved in ResolveNamedPort(endpoint, rule, peer, port))
                {
                    yield return resolved;
                }
                continue;
            }
            foreach (var protocol in port.Protocols)
            {
                if (port.Port == 0)
                {
                    yield return (protocol, 0, 0);
                    continue;
                }
                foreach (var (start, prefix) in MapState.RangeToPrefixes(port.Port, Math.Max(port.Port, port.EndPort)))
                {
                    yield return (protocol, start, prefix);
                }
            }
        }
    }

    private IEnumerable<(byte, ushort, byte)> ResolveNamedPort(Endpoint endpoint, PolicyRule rule, uint peer, PortMatch port)
    {
        IEnumerable<Endpoint> destinations;
        if (rule.Direction == TrafficDirection.Ingress)
        {
            destinations = [endpoint];
        }
        else
        {
            _namedPortDependents.Add(endpoint.Key);
            destinations = (_endpointsByIdentity.GetValueOrDefault(peer) ?? []).Select(k => _endpoints[k]);
        }
        var allowed = port.Protocols.ToHashSet();
        var seen = new HashSet<(byte, ushort)>();
        foreach (var container in destinations.SelectMany(d => d.Pod.Ports).Where(p => p.Name == port.Name))
        {
            var protocol = new PortMatch(container.Protocol, 0, 0, null).Protocols.First();
            if (allowed.Contains(protocol) && seen.Add((protocol, (ushort)container.Port)))
            {
                yield return (protocol, (ushort)container.Port, 16);
            }
        }
    }

    // ---- ipcache ----

    /// <summary>Address prefix → identity, as the datapath's ipcache holds it.</summary>
    public IEnumerable<(IPNetwork Prefix, uint Identity)> IpCache()
    {
        yield return (IPNetwork.Parse("0.0.0.0/0"), ReservedIdentities.WorldIPv4);
        yield return (IPNetwork.Parse("::/0"), ReservedIdentities.WorldIPv6);
        foreach (var identity in _cidrIdentities.Values)
        {
            yield return (identity.Prefix!.Value, identity.Id);
        }
        foreach (var endpoint in _endpoints.Values)
        {
            foreach (var address in endpoint.Addresses)
            {
                yield return (new IPNetwork(address, address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128), endpoint.Identity.Id);
            }
        }
    }

    /// <summary>
    /// The identity the datapath derives for an address: a pod address (always the longest prefix, and written
    /// last into the ipcache, so it wins over an equal CIDR prefix), else the longest CIDR prefix, else world.
    /// </summary>
    public uint IdentityOf(IPAddress address)
    {
        if (_identityByAddress.TryGetValue(address, out var pod))
        {
            return pod;
        }
        var best = (Length: -1, Identity: address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? ReservedIdentities.WorldIPv4 : ReservedIdentities.WorldIPv6);
        foreach (var identity in _cidrIdentities.Values)
        {
            var prefix = identity.Prefix!.Value;
            if (prefix.BaseAddress.AddressFamily == address.AddressFamily && prefix.PrefixLength > best.Length && prefix.Contains(address))
            {
                best = (prefix.PrefixLength, identity.Id);
            }
        }
        return best.Identity;
    }
}

/// <summary>Accumulates entries, then applies deny precedence so the longest match always carries the right verdict.</summary>
internal sealed class MapStateBuilder
{
    private const int MaxReferences = 8;
    private readonly Dictionary<PolicyKey, (RuleAction Verdict, List<string> From)> _entries = [];

    public void Add(PolicyKey key, RuleAction action, string reference)
    {
        if (_entries.TryGetValue(key, out var existing))
        {
            if (existing.Verdict == action)
            {
                if (existing.From.Count < MaxReferences && !existing.From.Contains(reference))
                {
                    existing.From.Add(reference);
                }
                return;
            }
            if (existing.Verdict == RuleAction.Deny)
            {
                return;
            }
        }
        _entries[key] = (action, [reference]);
    }

    public MapState Build()
    {
        // An allow entry covered by a deny entry of the same identity would otherwise win the longest-prefix
        // match (e.g. an L3-only deny and an L3+L4 allow); it becomes a deny carrying the deny's reasons.
        var denies = _entries.Where(e => e.Value.Verdict == RuleAction.Deny)
            .GroupBy(e => (e.Key.Direction, e.Key.Identity))
            .ToDictionary(g => g.Key, g => g.Select(e => e.Key).ToList());
        var result = new Dictionary<PolicyKey, PolicyEntry>(_entries.Count);
        foreach (var (key, (verdict, from)) in _entries)
        {
            if (verdict == RuleAction.Allow && denies.TryGetValue((key.Direction, key.Identity), out var candidates))
            {
                var cover = candidates.FindIndex(d => key.IsCoveredBy(d)) is var i and >= 0 ? candidates[i] : (PolicyKey?)null;
                if (cover is { } deny)
                {
                    var reasons = _entries[deny].From.Append($"(overrides allow by {string.Join("; ", from)})").ToList();
                    result[key] = new PolicyEntry(RuleAction.Deny, reasons);
                    continue;
                }
            }
            result[key] = new PolicyEntry(verdict, from);
        }
        return new MapState(result);
    }
}
