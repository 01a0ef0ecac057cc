using System.Net;
using System.Net.Sockets;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Resolution;

/// <summary>
/// The policies, by origin, with the selectors they hold in the selector cache and the CIDR identities their rules
/// name (registered in the endpoint index, which maps addresses to identities). Each change returns the selector keys
/// whose selection changed, for the dependency tracker. Not thread-safe.
/// </summary>
internal sealed class PolicyRepository(IdentityAllocator identities, SelectorCache cache, EndpointIndex index)
{
    private readonly Dictionary<string, StoredPolicy> _policies = new(StringComparer.Ordinal);

    private sealed record StoredPolicy(PolicyDocument Document, IReadOnlyList<string> SelectorKeys,
        IReadOnlyList<SecurityIdentity> CidrIdentities);

    public IEnumerable<PolicyDocument> Policies => _policies.Values.Select(p => p.Document);

    public IEnumerable<PolicySpec> Specs => _policies.Values.SelectMany(p => p.Document.Specs);

    public PolicyDocument? Find(string origin) => _policies.GetValueOrDefault(origin)?.Document;

    /// <summary>
    /// Stores a policy (replacing one of the same origin). Returns the identities its subjects select, and those the
    /// replaced one's selected: their endpoints' policy changes.
    /// </summary>
    public HashSet<uint> Upsert(PolicyDocument document, List<string> changedSelections)
    {
        var key = document.Origin.ToString();
        var cidrIdentities = new List<SecurityIdentity>();
        foreach (var cidr in document.Rules.SelectMany(r => r.Peers ?? []).OfType<CidrPeer>())
        {
            foreach (var prefix in cidr.Except.Prepend(cidr.Cidr))
            {
                cidrIdentities.Add(AcquireCidrIdentity(prefix, changedSelections));
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
        var selected = SubjectIdentities(document);
        if (old is not null)
        {
            selected.UnionWith(SubjectIdentities(old.Document));
            Release(old, changedSelections);
        }
        return selected;
    }

    /// <summary>Removes a policy; returns the identities its subjects selected, or null when there was no such policy.</summary>
    public HashSet<uint>? Remove(string origin, List<string> changedSelections)
    {
        if (!_policies.Remove(origin, out var old))
        {
            return null;
        }
        var selected = SubjectIdentities(old.Document);
        Release(old, changedSelections);
        return selected;
    }

    private HashSet<uint> SubjectIdentities(PolicyDocument document) =>
        document.Specs.SelectMany(s => cache.Selected(SelectorCache.SubjectKey(s.Subject))).ToHashSet();

    private void Release(StoredPolicy policy, List<string> changedSelections)
    {
        foreach (var key in policy.SelectorKeys)
        {
            cache.Release(key);
        }
        foreach (var identity in policy.CidrIdentities)
        {
            if (identities.Release(identity))
            {
                index.RemoveCidr(identity);
                changedSelections.AddRange(cache.RemoveIdentity(identity));
            }
        }
    }

    private SecurityIdentity AcquireCidrIdentity(IPNetwork prefix, List<string> changedSelections)
    {
        var labels = new LabelSet([new Label(LabelSource.Cidr, prefix.ToString(), ""), new Label(LabelSource.Reserved, "world", "")]);
        var (identity, created) = identities.Acquire(labels, IdentityKind.Cidr, prefix);
        if (created)
        {
            index.PutCidr(identity);
            changedSelections.AddRange(cache.AddIdentity(identity));
        }
        return identity;
    }

    private string AcquireSubject(LabelSelector subject) =>
        cache.Acquire(SelectorCache.SubjectKey(subject), () => new SelectorCache.Entry(
            SelectorCache.SubjectKey(subject), i => IsEndpointIdentity(i) && subject.Matches(i.Labels), subject.PinnedNamespace));

    /// <summary>Policies select endpoints: pods, and those still waiting for their labels (init).</summary>
    private static bool IsEndpointIdentity(SecurityIdentity identity) =>
        identity.Kind == IdentityKind.Pod || identity.Id == ReservedIdentities.Init;

    private string AcquirePeer(Peer peer)
    {
        var key = SelectorCache.PeerKey(peer);
        return cache.Acquire(key, () => peer switch
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
        "world-ipv4" => identity.Kind == IdentityKind.Cidr
            ? identity.Prefix!.Value.BaseAddress.AddressFamily == AddressFamily.InterNetwork
            : ReservedIdentities.ForEntity(entity).Contains(identity.Id),
        "world-ipv6" => identity.Kind == IdentityKind.Cidr
            ? identity.Prefix!.Value.BaseAddress.AddressFamily == AddressFamily.InterNetworkV6
            : ReservedIdentities.ForEntity(entity).Contains(identity.Id),
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
                var v4 = peer.Cidr.BaseAddress.AddressFamily == AddressFamily.InterNetwork;
                return peer.Cidr.PrefixLength == 0 && peer.Except.Count == 0
                    && (identity.Id == ReservedIdentities.World || identity.Id == (v4 ? ReservedIdentities.WorldIPv4
                        : ReservedIdentities.WorldIPv6));
            default:
                // KNP ipBlock: a pod identity matches when every pod of it has an address inside the block.
                var members = index.Members(identity.Id);
                return peer.MatchesPods && members.Count > 0 && members.All(k => index.Find(k)!.Addresses.Any(peer.Contains));
        }
    }
}
