using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Resolution;

/// <summary>
/// Selector → the set of identities it selects, kept current as identities come and go. Each distinct selector is
/// evaluated once against the identity universe; selectors pinned to one namespace only look at that namespace's
/// identities. Reference counted, so selectors shared by many rules are stored once.
/// </summary>
internal sealed class SelectorCache
{
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
    }

    public int Count => _entries.Count;

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
                : _identities.Values;
            foreach (var identity in candidates)
            {
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
            else
            {
                _unpinnedKeys.Remove(key);
            }
        }
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
        var changed = new List<string>();
        foreach (var entry in _entries.Values)
        {
            if (entry.Selected.Remove(identity.Id))
            {
                changed.Add(entry.Key);
            }
        }
        return changed;
    }

    /// <summary>Re-tests one identity against the selectors that could select it (its pod set may have changed).</summary>
    public List<string> Reevaluate(SecurityIdentity identity)
    {
        var changed = new List<string>();
        var ns = identity.Labels.ValueOf(WellKnownLabels.PodNamespace);
        IEnumerable<string> keys = ns is not null && _keysByNamespace.TryGetValue(ns, out var pinned)
            ? _unpinnedKeys.Concat(pinned)
            : _unpinnedKeys;
        foreach (var key in keys)
        {
            var entry = _entries[key];
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
