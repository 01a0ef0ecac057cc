using System.Net;
using System.Net.Sockets;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Resolution;

/// <summary>
/// Selector → the set of identities it selects, kept current as identities come and go. Each distinct selector is
/// evaluated once against the identity universe; selectors pinned to one namespace only look at that namespace's
/// identities. Reference counted, so selectors shared by many rules are stored once.
/// CIDR selectors and CIDR identities meet through prefix indexes: a CIDR selector can select only the CIDR
/// identities inside its prefix, so neither side scans the other (a policy of 20,000 CIDRs was quadratic: 400
/// million tests, 12 s holding the agent's lock).
/// </summary>
internal sealed class SelectorCache
{
    private readonly Dictionary<IPNetwork, HashSet<string>> _cidrKeysByPrefix = [];
    private readonly SortedSet<CidrIdentity> _cidrIdentities = new(CidrIdentity.Order);
    private readonly HashSet<uint> _otherIdentities = [];
    private readonly Dictionary<string, Entry> _entries = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, SecurityIdentity> _identities = [];
    private readonly Dictionary<string, HashSet<uint>> _identitiesByNamespace = new(StringComparer.Ordinal);
    private readonly Dictionary<string, HashSet<string>> _keysByNamespace = new(StringComparer.Ordinal);
    private readonly HashSet<string> _unpinnedKeys = new(StringComparer.Ordinal);

    internal sealed class Entry(string key, Func<SecurityIdentity, bool> matches, string? pinnedNamespace)
    {
        public string Key { get; } = key;
        public Func<SecurityIdentity, bool> Matches { get; } = matches;
        public string? PinnedNamespace { get; } = pinnedNamespace;
        public HashSet<uint> Selected { get; } = [];
        public int Refs { get; set; }
        public bool IsWildcard { get; init; }

        /// <summary>For a CIDR selector, its prefix: it selects no CIDR identity outside it.</summary>
        public IPNetwork? Cidr { get; init; }
    }

    /// <summary>A CIDR identity by the number range of its prefix, for range scans.</summary>
    private readonly record struct CidrIdentity(bool V6, UInt128 First, UInt128 Last, uint Id)
    {
        public static IComparer<CidrIdentity> Order { get; } = Comparer<CidrIdentity>.Create((a, b) =>
            a.V6 != b.V6 ? a.V6.CompareTo(b.V6) : a.First != b.First ? a.First.CompareTo(b.First) : a.Id.CompareTo(b.Id));

        public static CidrIdentity Of(IPNetwork prefix, uint id)
        {
            var (first, last) = Range(prefix);
            return new(prefix.BaseAddress.AddressFamily == AddressFamily.InterNetworkV6, first, last, id);
        }
    }

    private static (UInt128 First, UInt128 Last) Range(IPNetwork prefix)
    {
        var bytes = prefix.BaseAddress.GetAddressBytes();
        UInt128 value = 0;
        foreach (var b in bytes)
        {
            value = value << 8 | b;
        }
        var hostBits = bytes.Length * 8 - prefix.PrefixLength;
        var hostMask = hostBits == 0 ? UInt128.Zero : hostBits >= 128 ? UInt128.MaxValue : (UInt128.One << hostBits) - 1;
        return (value & ~hostMask, value | hostMask);
    }

    public int Count => _entries.Count;

    /// <summary>Selector tests made so far: the work that must not grow with the product of selectors and identities.</summary>
    public long Evaluations { get; private set; }

    public IReadOnlySet<uint> Selected(string key) => _entries[key].Selected;

    public bool IsWildcard(string key) => _entries[key].IsWildcard;

    public static string SubjectKey(LabelSelector selector) => "subject:" + selector.Canonical;

    public static string PeerKey(Peer peer) => peer switch
    {
        EndpointPeer e => "endpoints:" + e.Selector.Canonical,
        CidrPeer c => (c.MatchesPods ? "ipblock:" : "cidr:") + c,
        EntityPeer n => "entity:" + n.Entity,
        _ => throw new ArgumentOutOfRangeException(nameof(peer)),
    };

    public static string RequiresKey(LabelSelector selector) => "endpoints:" + selector.Canonical;

    /// <summary>Adds a reference to a selector, evaluating it on first use.</summary>
    public string Acquire(string key, Func<Entry> create)
    {
        if (!_entries.TryGetValue(key, out var entry))
        {
            entry = create();
            IEnumerable<SecurityIdentity> candidates = entry.PinnedNamespace is { } ns
                ? (_identitiesByNamespace.GetValueOrDefault(ns) ?? []).Select(id => _identities[id])
                : entry.Cidr is { } cidr
                    ? _otherIdentities.Concat(CidrIdentitiesWithin(cidr)).Select(id => _identities[id])
                    : _identities.Values;
            foreach (var identity in candidates)
            {
                Evaluations++;
                if (entry.Matches(identity))
                {
                    entry.Selected.Add(identity.Id);
                }
            }
            _entries[key] = entry;
            if (entry.PinnedNamespace is { } pinned)
            {
                Index(_keysByNamespace, pinned).Add(key);
            }
            else if (entry.Cidr is { } prefix)
            {
                IndexCidr(prefix).Add(key);
            }
            else
            {
                _unpinnedKeys.Add(key);
            }
        }
        entry.Refs++;
        return key;
    }

    public void Release(string key)
    {
        if (_entries.TryGetValue(key, out var entry) && --entry.Refs <= 0)
        {
            _entries.Remove(key);
            if (entry.PinnedNamespace is { } pinned)
            {
                _keysByNamespace[pinned].Remove(key);
            }
            else if (entry.Cidr is { } prefix)
            {
                _cidrKeysByPrefix[prefix].Remove(key);
                if (_cidrKeysByPrefix[prefix].Count == 0)
                {
                    _cidrKeysByPrefix.Remove(prefix);
                }
            }
            else
            {
                _unpinnedKeys.Remove(key);
            }
        }
    }

    private HashSet<string> IndexCidr(IPNetwork prefix)
    {
        if (!_cidrKeysByPrefix.TryGetValue(prefix, out var keys))
        {
            keys = new HashSet<string>(StringComparer.Ordinal);
            _cidrKeysByPrefix[prefix] = keys;
        }
        return keys;
    }

    /// <summary>CIDR identities whose prefix lies inside <paramref name="cidr"/>: one range scan.</summary>
    private List<uint> CidrIdentitiesWithin(IPNetwork cidr)
    {
        var (first, last) = Range(cidr);
        var v6 = cidr.BaseAddress.AddressFamily == AddressFamily.InterNetworkV6;
        return _cidrIdentities.GetViewBetween(new(v6, first, 0, 0), new(v6, last, UInt128.MaxValue, uint.MaxValue))
            .Where(c => c.Last <= last).Select(c => c.Id).ToList();
    }

    /// <summary>Keys of CIDR selectors whose prefix covers <paramref name="prefix"/> (each shorter or equal prefix of it).</summary>
    private IEnumerable<string> CidrKeysCovering(IPNetwork prefix)
    {
        var bytes = prefix.BaseAddress.GetAddressBytes();
        for (var length = 0; length <= prefix.PrefixLength; length++)
        {
            var masked = (byte[])bytes.Clone();
            for (var bit = length; bit < masked.Length * 8; bit++)
            {
                masked[bit / 8] &= (byte)~(0x80 >> (bit % 8));
            }
            if (_cidrKeysByPrefix.TryGetValue(new IPNetwork(new IPAddress(masked), length), out var keys))
            {
                foreach (var key in keys)
                {
                    yield return key;
                }
            }
        }
    }

    /// <summary>The selectors that could select this identity: a CIDR identity only those of prefixes covering it.</summary>
    private IEnumerable<string> Candidates(SecurityIdentity identity)
    {
        var ns = identity.Labels.ValueOf(WellKnownLabels.PodNamespace);
        IEnumerable<string> keys = ns is not null && _keysByNamespace.TryGetValue(ns, out var pinned)
            ? _unpinnedKeys.Concat(pinned)
            : _unpinnedKeys;
        return identity.Kind == IdentityKind.Cidr && identity.Prefix is { } prefix
            ? keys.Concat(CidrKeysCovering(prefix))
            : keys.Concat(_cidrKeysByPrefix.Values.SelectMany(k => k));
    }

    /// <summary>Adds an identity; returns the keys whose selection changed.</summary>
    public List<string> AddIdentity(SecurityIdentity identity)
    {
        _identities[identity.Id] = identity;
        var ns = identity.Labels.ValueOf(WellKnownLabels.PodNamespace);
        if (ns is not null)
        {
            Index(_identitiesByNamespace, ns).Add(identity.Id);
        }
        if (identity.Kind == IdentityKind.Cidr && identity.Prefix is { } prefix)
        {
            _cidrIdentities.Add(CidrIdentity.Of(prefix, identity.Id));
        }
        else
        {
            _otherIdentities.Add(identity.Id);
        }
        return Reevaluate(identity);
    }

    public List<string> RemoveIdentity(SecurityIdentity identity)
    {
        _identities.Remove(identity.Id);
        var ns = identity.Labels.ValueOf(WellKnownLabels.PodNamespace);
        if (ns is not null && _identitiesByNamespace.TryGetValue(ns, out var set))
        {
            set.Remove(identity.Id);
        }
        if (identity.Kind == IdentityKind.Cidr && identity.Prefix is { } prefix)
        {
            _cidrIdentities.Remove(CidrIdentity.Of(prefix, identity.Id));
        }
        else
        {
            _otherIdentities.Remove(identity.Id);
        }
        var changed = new List<string>();
        foreach (var key in Candidates(identity))
        {
            if (_entries[key].Selected.Remove(identity.Id))
            {
                changed.Add(key);
            }
        }
        return changed;
    }

    /// <summary>Re-tests one identity against the selectors that could select it (its pod set may have changed).</summary>
    public List<string> Reevaluate(SecurityIdentity identity)
    {
        var changed = new List<string>();
        foreach (var key in Candidates(identity))
        {
            var entry = _entries[key];
            Evaluations++;
            var matches = entry.Matches(identity);
            if (matches ? entry.Selected.Add(identity.Id) : entry.Selected.Remove(identity.Id))
            {
                changed.Add(key);
            }
        }
        return changed;
    }

    private static HashSet<T> Index<T>(Dictionary<string, HashSet<T>> index, string key)
    {
        if (!index.TryGetValue(key, out var set))
        {
            set = [];
            index[key] = set;
        }
        return set;
    }
}
