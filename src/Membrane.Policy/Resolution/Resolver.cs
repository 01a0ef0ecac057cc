using Membrane.Policy.Identity;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>One endpoint's resolved policy and what it read: the selectors, and whether egress named ports.</summary>
internal sealed record Resolution(EndpointPolicy Policy, IReadOnlySet<string> SelectorKeys, bool UsesNamedPorts);

/// <summary>
/// Rules → an endpoint's map state, with deny precedence, fromRequires narrowing and named ports. Pure: it reads the
/// repository, the selector cache and the endpoint index and changes none of them, so a result can be cached until
/// one of the selectors it read changes.
/// </summary>
internal sealed class Resolver(PolicyRepository repository, SelectorCache cache, EndpointIndex index)
{
    /// <summary>What one resolution read.</summary>
    private sealed class Reads
    {
        public HashSet<string> SelectorKeys { get; } = new(StringComparer.Ordinal);

        public bool NamedPorts { get; set; }
    }

    public Resolution Compute(Endpoint endpoint, long revision)
    {
        var reads = new Reads();
        var selectorKeys = reads.SelectorKeys;
        var specs = repository.Specs
            .Where(s => cache.Selected(SelectorCache.SubjectKey(s.Subject)).Contains(endpoint.Identity.Id))
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
                selectorKeys.Add(key);
                var selected = cache.Selected(key);
                required = required is null ? [.. selected] : [.. required.Intersect(selected)];
            }
            foreach (var rule in rules.Where(r => !r.AllowsNothing))
            {
                AddRule(builder, endpoint, rule, required, reads);
            }
        }
        return new Resolution(new EndpointPolicy(endpoint, builder.Build(), specs, enforced, revision), selectorKeys, reads.NamedPorts);
    }

    private void AddRule(MapStateBuilder builder, Endpoint endpoint, PolicyRule rule, HashSet<uint>? required, Reads reads)
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
                reads.SelectorKeys.Add(key);
                if (cache.IsWildcard(key))
                {
                    peers.Add(ReservedIdentities.Any);
                }
                else
                {
                    peers.UnionWith(cache.Selected(key));
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
        if (rule.Direction == TrafficDirection.Egress && peers.Contains(ReservedIdentities.Any) && rule.Ports?.Any(p =>
            p.Name is not null) == true)
        {
            // An egress named port means the port of that name on the destination: to "any peer" it can only
            // reach the pods that declare it, so the wildcard expands into their identities for named ports.
            var named = rule with { Icmps = null, Ports = rule.Ports!.Where(p => p.Name is not null).ToList() };
            foreach (var identity in index.EndpointIdentities)
            {
                foreach (var (protocol, port, prefix) in L4Keys(endpoint, named, identity, reads))
                {
                    builder.Add(PolicyKey.Create(rule.Direction, identity, protocol, port, prefix), rule.Action, reference);
                }
            }
            rule = rule with { Ports = rule.Ports!.Where(p => p.Name is null).ToList() };
            if (rule.Ports.Count == 0 && rule.Icmps is null)
            {
                return;
            }
        }
        foreach (var peer in peers)
        {
            foreach (var (protocol, port, prefix) in L4Keys(endpoint, rule, peer, reads))
            {
                builder.Add(PolicyKey.Create(rule.Direction, peer, protocol, port, prefix), rule.Action, reference);
            }
        }
    }

    /// <summary>The protocol/port/ICMP part of a rule's keys for one peer; named ports resolve on the destination.</summary>
    private IEnumerable<(byte Protocol, ushort Port, byte Prefix)> L4Keys(Endpoint endpoint, PolicyRule rule, uint peer, Reads reads)
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
                foreach (var resolved in ResolveNamedPort(endpoint, rule, peer, port, reads))
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

    private IEnumerable<(byte, ushort, byte)> ResolveNamedPort(Endpoint endpoint, PolicyRule rule, uint peer, PortMatch port, Reads reads)
    {
        IEnumerable<Endpoint> destinations;
        if (rule.Direction == TrafficDirection.Ingress)
        {
            destinations = [endpoint];
        }
        else
        {
            reads.NamedPorts = true; // the destination pods' ports: a change of any pod's ports may change this
            destinations = index.Members(peer).Select(k => index.Find(k)!);
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
