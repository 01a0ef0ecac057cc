using System.Net;
using Membrane.Policy.Labels;

namespace Membrane.Policy.Identity;

/// <summary>
/// Label set → numeric identity, reference counted. Equal identity labels always get the same number; a number is
/// freed when its last user goes. <see cref="Restore"/> lets a restarted agent keep the numbers it had.
/// </summary>
public sealed class IdentityAllocator
{
    private readonly Dictionary<string, (SecurityIdentity Identity, int Refs)> _byLabels = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, SecurityIdentity> _byId = [];
    private readonly Dictionary<string, SecurityIdentity> _reservedByLabels = ReservedIdentities.All
        .ToDictionary(i => i.Labels.Canonical, StringComparer.Ordinal);
    private uint _nextPod = ReservedIdentities.FirstPodIdentity;
    private uint _nextCidr = ReservedIdentities.FirstCidrIdentity;

    public IdentityAllocator()
    {
        foreach (var reserved in ReservedIdentities.All)
        {
            _byId[reserved.Id] = reserved;
        }
    }

    public IEnumerable<SecurityIdentity> All => _byId.Values.OrderBy(i => i.Id);

    public int Count => _byId.Count;

    public SecurityIdentity? Get(uint id) => _byId.GetValueOrDefault(id);

    /// <summary>
    /// Where new pod identity numbers come from when not from this allocator: in cluster mode the cluster store, so
    /// equal labels have equal numbers on every node. Null: numbered here.
    /// </summary>
    public Func<LabelSet, uint>? PodNumbers { get; init; }

    /// <summary>Told when a pod identity has no user left here (the cluster store forgets this node's use of it).</summary>
    public Action<uint>? PodReleased { get; init; }

    /// <summary>Takes a reference; returns the identity and whether it was newly created.</summary>
    public (SecurityIdentity Identity, bool Created) Acquire(LabelSet labels, IdentityKind kind, IPNetwork? prefix = null)
    {
        ArgumentNullException.ThrowIfNull(labels);
        if (_reservedByLabels.TryGetValue(labels.Canonical, out var reserved))
        {
            return (reserved, false); // reserved identities (init) are never created or freed
        }
        if (_byLabels.TryGetValue(labels.Canonical, out var existing))
        {
            _byLabels[labels.Canonical] = (existing.Identity, existing.Refs + 1);
            // A number restored from disk has no users yet: its first user brings it into being.
            return (existing.Identity, existing.Refs == 0);
        }
        uint id;
        if (kind == IdentityKind.Pod && PodNumbers is { } numbers)
        {
            id = numbers(labels);
            if (_byId.TryGetValue(id, out var taken))
            {
                throw new InvalidOperationException($"identity {id} for {labels} is held here by {taken.Labels}: the cluster store and " +
                    "this node disagree; restart the agent to take the store's numbers");
            }
        }
        else
        {
            do
            {
                id = kind == IdentityKind.Cidr ? _nextCidr++ : _nextPod++;
            }
            while (_byId.ContainsKey(id));
        }
        var identity = new SecurityIdentity(id, labels, kind, prefix);
        _byLabels[labels.Canonical] = (identity, 1);
        _byId[id] = identity;
        return (identity, true);
    }

    /// <summary>Drops a reference; returns true when the identity is gone.</summary>
    public bool Release(SecurityIdentity identity)
    {
        ArgumentNullException.ThrowIfNull(identity);
        if (!_byLabels.TryGetValue(identity.Labels.Canonical, out var existing))
        {
            return false;
        }
        if (existing.Refs > 1)
        {
            _byLabels[identity.Labels.Canonical] = (existing.Identity, existing.Refs - 1);
            return false;
        }
        _byLabels.Remove(identity.Labels.Canonical);
        _byId.Remove(identity.Id);
        if (identity.Kind == IdentityKind.Pod)
        {
            PodReleased?.Invoke(identity.Id);
        }
        return true;
    }

    /// <summary>Pre-assigns a number to a label set (from persisted state) without taking a reference.</summary>
    public void Restore(uint id, LabelSet labels, IdentityKind kind, IPNetwork? prefix = null)
    {
        ArgumentNullException.ThrowIfNull(labels);
        if (_byId.ContainsKey(id) || _byLabels.ContainsKey(labels.Canonical))
        {
            return;
        }
        var identity = new SecurityIdentity(id, labels, kind, prefix);
        _byLabels[labels.Canonical] = (identity, 0);
        _byId[id] = identity;
        // New numbers continue after the restored ones: a number freed later is not handed to other labels at once.
        if (kind == IdentityKind.Cidr)
        {
            _nextCidr = Math.Max(_nextCidr, id + 1);
        }
        else
        {
            _nextPod = Math.Max(_nextPod, id + 1);
        }
    }
}
