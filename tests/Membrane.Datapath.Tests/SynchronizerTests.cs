using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;
using Membrane.Policy.Rules;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

public sealed class SynchronizerTests : IDisposable
{
    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    [Fact]
    public void MapHoldsExactlyTheStateAndResyncIsADiff()
    {
        _h.Use(Cnp("p", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """), "a/server");
        var state = _h.Engine.Resolve("a/server").State;
        var dumped = _h.Policy.Dump(DatapathHarness.TestIfIndex);
        Assert.Equal(state.Entries.Keys.Select(k => k.ToString()).Order(), dumped.Select(d => d.Key.ToString()).Order());

        Assert.True(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(1, 80))));
        var again = _h.Policy.Sync(DatapathHarness.TestIfIndex, state);
        Assert.Equal(0, again.Changes);
        var entry = _h.Policy.Dump(DatapathHarness.TestIfIndex).Single(e => e.Key.PortProtocol == "80/TCP");
        Assert.Equal(1ul, entry.Value.Packets); // unchanged entries keep their counters
    }

    [Fact]
    public void RemovingAnEndpointEmptiesItsEntries()
    {
        _h.Use("", "a/server");
        Assert.NotEmpty(_h.Policy.Dump(DatapathHarness.TestIfIndex));
        _h.Policy.Remove(DatapathHarness.TestIfIndex);
        Assert.Empty(_h.Policy.Dump(DatapathHarness.TestIfIndex));
        Assert.False(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(1, 80))), "no entries: default deny");
    }

    [Fact]
    public void AdoptedMapIsSyncedByDiff()
    {
        _h.Use("", "a/server");
        var fresh = new PolicyMapSynchronizer(_h.Datapath.PolicyMap, new RuleRegistry());
        fresh.Adopt();
        var lockdown = Cluster.With(Cnp("p", "a",
            "endpointSelector: {matchLabels: {app: server}}\ningress: [{}]")).Engine.Resolve("a/server").State;
        var result = fresh.Sync(DatapathHarness.TestIfIndex, lockdown);
        Assert.Equal(1, result.Removed); // the ingress allow-all entry
        Assert.False(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(1, 80))));
        Assert.True(_h.Sends(Frame(_h.V4("a/server"), _h.V4("a/client"), Tcp, TcpSegment(1, 80))));
    }

    /// <summary>
    /// Replays a policy change step by step (each map write on its own) and checks that no intermediate state
    /// allows a packet that both the old and the new policy deny.
    /// </summary>
    [Fact]
    public void NoIntermediateStateAllowsWhatBothPoliciesDeny()
    {
        var before = Cluster.With(Cnp("p", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{toPorts: [{ports: [{port: "80", endPort: 95, protocol: TCP}]}]}]
            ingressDeny: [{toPorts: [{ports: [{port: "81", protocol: TCP}]}]}]
            """)).Engine.Resolve("a/server").State;
        var after = Cluster.With(Cnp("p", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{toPorts: [{ports: [{port: "82", endPort: 100, protocol: TCP}]}]}, {icmps: [{fields: [{type: 8}]}]}]
            ingressDeny: [{toPorts: [{ports: [{port: "90", protocol: TCP}]}]}]
            """)).Engine.Resolve("a/server").State;
        var steps = SafeUpdateOrder.Plan(before.Entries, after.Entries, e => e.IsDeny, (a, b) => a.Verdict == b.Verdict);
        Assert.NotEmpty(steps);
        var shadow = before.Entries.ToDictionary(e => e.Key, e => e.Value);
        foreach (var (key, entry, delete) in steps)
        {
            if (delete)
            {
                shadow.Remove(key);
            }
            else
            {
                shadow[key] = entry;
            }
            var intermediate = new Membrane.Policy.Resolution.MapState(new(shadow));
            for (ushort port = 75; port <= 105; port++)
            {
                var denyBoth = !before.Lookup(TrafficDirection.Ingress, 999, IpProtocol.Tcp, port).Allowed
                    && !after.Lookup(TrafficDirection.Ingress, 999, IpProtocol.Tcp, port).Allowed;
                Assert.False(denyBoth && intermediate.Lookup(TrafficDirection.Ingress, 999, IpProtocol.Tcp, port).Allowed,
                    $"port {port} leaked after writing {key}");
            }
        }
        Assert.Equal(after.Entries.Keys.Select(k => k.ToString()).Order(), shadow.Keys.Select(k => k.ToString()).Order());
    }
}
