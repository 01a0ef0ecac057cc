using Membrane.Policy.Identity;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>Resolution: rules to per-endpoint map state, incrementally for the dirty endpoints.</summary>
public sealed partial class PolicyEngine
{
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
}
