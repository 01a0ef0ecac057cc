using System.Net;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Resolution;

/// <summary>Policies: storing them, acquiring and releasing their selectors and CIDR identities.</summary>
public sealed partial class PolicyEngine
{
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
}
