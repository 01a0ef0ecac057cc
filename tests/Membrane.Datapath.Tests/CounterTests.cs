using Membrane.Datapath.Maps;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>
/// The kernel's counters behind the metrics: drops by reason and direction, packets let through by direction, and
/// deny entries counting what they dropped as allow entries count what they admitted.
/// </summary>
public sealed class CounterTests : IDisposable
{
    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    [Fact]
    public void DropsCountByDirectionAndForwardsByDirection()
    {
        _h.Use(Cnp("p", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "81", protocol: TCP}]}]}]
            """), "a/server");
        var drops = _h.Datapath.DropCountersByDirection();
        var (ingress, egress) = _h.Datapath.Forwarded();

        Assert.False(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Icmp, IcmpMessage(8, 0)))); // default deny
        Assert.False(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(40000, 81)))); // deny entry
        Assert.True(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(40001, 80))));
        Assert.True(_h.Sends(Frame(_h.V4("a/server"), _h.V4("a/client"), Tcp, TcpSegment(80, 40001, TcpSyn | TcpAck))));

        var after = _h.Datapath.DropCountersByDirection();
        Assert.Equal(drops[(DropReason.Policy, WireDirection.Ingress)].Packets + 1, after[(DropReason.Policy,
            WireDirection.Ingress)].Packets);
        Assert.Equal(drops[(DropReason.PolicyDeny, WireDirection.Ingress)].Packets + 1,
            after[(DropReason.PolicyDeny, WireDirection.Ingress)].Packets);
        Assert.Equal(drops[(DropReason.Policy, WireDirection.Egress)].Packets, after[(DropReason.Policy, WireDirection.Egress)].Packets);
        Assert.Equal(after[(DropReason.Policy, WireDirection.Ingress)].Packets + after[(DropReason.Policy, WireDirection.Egress)].Packets,
            _h.Datapath.DropCounters()[DropReason.Policy].Packets);
        var (ingressAfter, egressAfter) = _h.Datapath.Forwarded();
        Assert.Equal(ingress.Packets + 1, ingressAfter.Packets);
        Assert.Equal(egress.Packets + 1, egressAfter.Packets);

        // The deny entry counted its drop; the allow entry its admitted connection.
        var entries = _h.Datapath.PolicyMap.Entries().Where(e => e.Key.IfIndex == DatapathHarness.TestIfIndex
            && e.Value.Packets > 0).ToList();
        Assert.Contains(entries, e => e.Value.Deny == 1 && e.Key.Port == 81);
        Assert.Contains(entries, e => e.Value.Deny == 0 && e.Key.Port == 80);
    }
}
