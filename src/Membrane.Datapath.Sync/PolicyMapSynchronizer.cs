using System.Buffers.Binary;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;

namespace Membrane.Datapath.Sync;

/// <summary>
/// Writes an endpoint's <see cref="MapState"/> into the policy map as a diff against what is there. The order
/// guarantees that no packet is ever allowed that both the old and the new policy deny:
/// see <see cref="SafeUpdateOrder"/>. Unchanged entries are not touched, so their counters keep counting.
/// </summary>
public sealed class PolicyMapSynchronizer(BpfMap map, RuleRegistry rules)
{
    private readonly Dictionary<uint, Dictionary<PolicyMapKey, PolicyMapValue>> _written = [];
    private readonly Lock _gate = new();

    public RuleRegistry Rules => rules;

    public static PolicyMapKey ToMapKey(uint ifIndex, PolicyKey key) => new()
    {
        IfIndex = ifIndex,
        Identity = key.Identity,
        Direction = (byte)ToWire(key.Direction),
        Protocol = key.Protocol,
        PortNetworkOrder = BinaryPrimitives.ReverseEndianness(key.Port),
        PrefixLength = key.Protocol == IpProtocol.Any ? PolicyMapKey.L3PrefixLength : 80u + key.PortPrefixLength,
    };

    public static PolicyKey FromMapKey(PolicyMapKey key) => PolicyKey.Create(
        FromWire((WireDirection)key.Direction), key.Identity, key.Protocol, key.Port,
        key.PrefixLength <= PolicyMapKey.L3PrefixLength ? (byte)0 : (byte)(key.PrefixLength - 80));

    public SyncResult Sync(uint ifIndex, MapState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var desired = new Dictionary<PolicyMapKey, PolicyMapValue>(state.Count);
        foreach (var (key, entry) in state.Entries)
        {
            desired[ToMapKey(ifIndex, key)] = new PolicyMapValue
            {
                Deny = entry.IsDeny ? (byte)1 : (byte)0,
                Kind = (byte)ToWire(key.Kind),
                RuleId = rules.Intern(entry.DerivedFrom),
            };
        }
        lock (_gate)
        {
            var current = _written.GetValueOrDefault(ifIndex) ?? [];
            var steps = SafeUpdateOrder.Plan(current, desired, v => v.Deny == 1,
                (a, b) => a.Deny == b.Deny && a.Kind == b.Kind && a.RuleId == b.RuleId);
            int added = 0, updated = 0, removed = 0;
            foreach (var step in steps)
            {
                if (step.Delete)
                {
                    map.Delete(step.Key);
                    removed++;
                    continue;
                }
                if (current.ContainsKey(step.Key))
                {
                    updated++;
                }
                else
                {
                    added++;
                }
                map.Update(step.Key, step.Value);
            }
            _written[ifIndex] = desired;
            return new SyncResult(added, updated, removed, desired.Count - added - updated);
        }
    }

    /// <summary>Removes every entry of an endpoint (its programs must already be detached).</summary>
    /// <summary>Entries written for all endpoints.</summary>
    public int Count
    {
        get
        {
            lock (_gate)
            {
                return _written.Values.Sum(e => e.Count);
            }
        }
    }

    /// <summary>
    /// Throws <see cref="MapCapacityException"/> unless the map can take these endpoints' new entries (given as
    /// counts) while every other endpoint keeps its own. A sync adds before it deletes (no window without policy),
    /// so an endpoint briefly holds its old and new entries: both are counted.
    /// </summary>
    public void CheckCapacity(IEnumerable<(uint IfIndex, string Endpoint, int Entries)> changes)
    {
        ArgumentNullException.ThrowIfNull(changes);
        lock (_gate)
        {
            var total = (long)_written.Values.Sum(e => e.Count);
            var largest = ("", 0);
            foreach (var (ifIndex, endpoint, entries) in changes)
            {
                total += entries;
                largest = entries > largest.Item2 ? (endpoint, entries) : largest;
            }
            if (total > map.MaxEntries)
            {
                throw new MapCapacityException($"the policy map {map.Name} would need {total:N0} entries and holds {map.MaxEntries:N0} " +
                    $"(largest change: endpoint {largest.Item1} with {largest.Item2:N0} entries)");
            }
        }
    }

    public int Remove(uint ifIndex)
    {
        lock (_gate)
        {
            if (!_written.Remove(ifIndex, out var current))
            {
                current = map.Keys<PolicyMapKey>().Where(k => k.IfIndex == ifIndex).ToDictionary(k => k, _ => default(PolicyMapValue));
            }
            foreach (var key in current.Keys)
            {
                map.Delete(key);
            }
            return current.Count;
        }
    }

    /// <summary>Reads what a previous agent left in a pinned map, so the next sync is a diff, not a rewrite.</summary>
    public void Adopt()
    {
        lock (_gate)
        {
            _written.Clear();
            foreach (var (key, value) in map.Entries<PolicyMapKey, PolicyMapValue>())
            {
                if (!_written.TryGetValue(key.IfIndex, out var entries))
                {
                    entries = [];
                    _written[key.IfIndex] = entries;
                }
                entries[key] = value with { Packets = 0, Bytes = 0 };
            }
        }
    }

    /// <summary>Interface indexes that have entries (written or adopted).</summary>
    public IReadOnlyList<int> Endpoints()
    {
        lock (_gate)
        {
            return _written.Keys.Select(k => (int)k).ToList();
        }
    }

    /// <summary>The entries of one endpoint as the kernel holds them, with counters.</summary>
    public IReadOnlyList<(PolicyKey Key, PolicyMapValue Value)> Dump(uint ifIndex) =>
        map.Entries<PolicyMapKey, PolicyMapValue>().Where(e => e.Key.IfIndex == ifIndex)
            .Select(e => (FromMapKey(e.Key), e.Value)).ToList();

    public static int MatchKindCode(MatchKind kind) => (int)ToWire(kind);

    public static WireMatchKind ToWire(MatchKind kind) => kind switch
    {
        MatchKind.Any => WireMatchKind.Any,
        MatchKind.L3Only => WireMatchKind.L3Only,
        MatchKind.L4Only => WireMatchKind.L4Only,
        MatchKind.L3L4 => WireMatchKind.L3L4,
        _ => WireMatchKind.Icmp,
    };

    public static WireDirection ToWire(TrafficDirection direction) =>
        direction == TrafficDirection.Ingress ? WireDirection.Ingress : WireDirection.Egress;

    public static TrafficDirection FromWire(WireDirection direction) =>
        direction == WireDirection.Ingress ? TrafficDirection.Ingress : TrafficDirection.Egress;
}
