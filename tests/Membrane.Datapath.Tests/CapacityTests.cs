using System.Net;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Sync;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;

namespace Membrane.Datapath.Tests;

/// <summary>
/// Capacity is checked before a map is written, on real maps made small: a change that does not fit is refused with
/// the map and the numbers, and the map keeps exactly what it had (before, a sync failed half-way and the
/// synchroniser's view drifted from the kernel's).
/// </summary>
public sealed class CapacityTests : IDisposable
{
    private readonly PolicyDatapath _datapath = PolicyDatapath.Load(new LoadOptions
    {
        MaxEntries = new Dictionary<string, uint> { ["mb_policy"] = 100, ["mb_ipcache4"] = 10, ["mb_ipcache6"] = 10 },
    });

    private readonly PolicyMapSynchronizer _policy;

    public CapacityTests() => _policy = new PolicyMapSynchronizer(_datapath.PolicyMap, _datapath.Rules);

    public void Dispose() => _datapath.Dispose();

    private static MapState Ports(int count)
    {
        var entries = new Dictionary<PolicyKey, PolicyEntry>();
        for (var port = 1; port <= count; port++)
        {
            entries[PolicyKey.Create(TrafficDirection.Ingress, 300, IpProtocol.Tcp, (ushort)port, 16)] = new PolicyEntry(RuleAction.Allow,
                ["test"]);
        }
        return new MapState(entries);
    }

    [Fact]
    public void PolicyMapChangesThatDoNotFitAreRefusedBeforeWriting()
    {
        _policy.Sync(7, Ports(60));
        _policy.CheckCapacity([(8, "b/pod", 40)]);
        var refused = Assert.Throws<MapCapacityException>(() => _policy.CheckCapacity([(8, "b/pod", 41)]));
        Assert.Contains("mb_policy would need 101 entries and holds 100 (largest change: endpoint b/pod with 41 entries)", refused.Message,
            StringComparison.Ordinal);
        // Replacing an endpoint's entries briefly holds old and new: 60 + 50 does not fit even though 50 alone would.
        Assert.Throws<MapCapacityException>(() => _policy.CheckCapacity([(7, "a/pod", 50)]));
        Assert.Equal(60, _policy.Count);
        Assert.Equal(60, _datapath.PolicyMap.Keys<Maps.PolicyMapKey>().Count());
    }

    [Fact]
    public void IpCacheChangesThatDoNotFitAreRefusedBeforeWriting()
    {
        List<(IPNetwork, uint)> Prefixes(int from, int count) =>
            Enumerable.Range(from, count).Select(i => (IPNetwork.Parse($"198.18.0.{i}/32"), 300u)).ToList();
        _datapath.IpCache.Sync(Prefixes(0, 8));
        _datapath.IpCache.CheckCapacity(Prefixes(0, 10));
        var refused = Assert.Throws<MapCapacityException>(() => _datapath.IpCache.CheckCapacity(Prefixes(0, 11)));
        Assert.Contains("mb_ipcache4 would need 11 entries and holds 10", refused.Message, StringComparison.Ordinal);
        // Written before the old are deleted: 8 old + 5 new.
        Assert.Throws<MapCapacityException>(() => _datapath.IpCache.CheckCapacity(Prefixes(100, 5)));
        Assert.Equal((8, 0), _datapath.IpCache.Count);
        Assert.Equal(8, _datapath.IpCache.Dump().Count());
    }
}
