using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

public sealed class EventTests : IDisposable
{
    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    [Fact]
    public void DropEventNamesPeerIcmpTypeReasonAndRule()
    {
        _h.Use(Cnp("deny", "a",
            "endpointSelector: {matchLabels: {app: server}}\ningressDeny: [{icmps: [{fields: [{type: 13}]}]}]\ningress: [{fromEntities: " +
            "[cluster]}]"), "a/server");
        _h.Datapath.SetEvents(drops: true, verdicts: false);
        Assert.False(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Icmp, IcmpMessage(13, 0))));
        var e = Assert.Single(_h.Events());
        Assert.Equal((byte)EventType.Drop, e.Type);
        Assert.Equal((byte)DropReason.PolicyDeny, e.Reason);
        Assert.Equal(DatapathHarness.TestIfIndex, e.IfIndex);
        Assert.Equal(0, e.Direction); // ingress
        Assert.Equal(Icmp, e.Protocol);
        Assert.Equal(13, e.IcmpType);
        Assert.Equal(_h.Engine.FindEndpoint("a/client")!.Identity.Id, e.PeerIdentity);
        Assert.Equal(_h.V4("a/client"), e.SourceAddress);
        Assert.Contains("CiliumNetworkPolicy/a/deny: spec.ingressDeny[0]", _h.Datapath.Rules.Describe(e.RuleId), StringComparison.Ordinal);
    }

    [Fact]
    public void VerdictEventsOnlyWhenEnabledAndOnlyForNewConnections()
    {
        _h.Use("", "a/server");
        Assert.True(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(1000, 80))));
        Assert.Empty(_h.Events());
        _h.Datapath.SetEvents(drops: true, verdicts: true);
        Assert.True(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(1001, 80))));
        Assert.True(_h.Receives(Frame(_h.V4("a/client"), _h.V4("a/server"), Tcp, TcpSegment(1001, 80, TcpAck))));
        var e = Assert.Single(_h.Events());
        Assert.Equal((byte)EventType.Verdict, e.Type);
        Assert.Equal(80, e.DestinationPort);
        Assert.Equal(1, e.MatchKind); // any: no policy enforces ingress
    }

    [Fact]
    public void TraceEventsReportEveryPacketConntrackLetsThroughOnlyWhenOn()
    {
        _h.Use("", "a/server");
        var (client, server) = (_h.V4("a/client"), _h.V4("a/server"));
        _h.Datapath.SetEvents(drops: true, verdicts: true);
        Assert.True(_h.Receives(Frame(client, server, Tcp, TcpSegment(2000, 80))));
        Assert.True(_h.Sends(Frame(server, client, Tcp, TcpSegment(80, 2000, TcpSyn | TcpAck))));
        Assert.Equal([(byte)EventType.Verdict], _h.Events().Select(e => e.Type)); // the reply is no new decision

        _h.Datapath.SetEvents(drops: true, verdicts: true, traces: true);
        Assert.True(_h.Sends(Frame(server, client, Tcp, TcpSegment(80, 2000, TcpAck, payload: 10))));
        Assert.True(_h.Receives(Frame(client, server, Tcp, TcpSegment(2000, 80, TcpAck))));
        var original = IPv4Packet(server, client, Tcp, TcpSegment(80, 2000, TcpAck));
        Assert.True(_h.Receives(Frame(client, server, Icmp, IcmpError(3, 4, original))), "path-MTU error about the connection");
        var events = _h.Events();
        Assert.All(events, e => Assert.Equal((byte)EventType.Trace, e.Type));
        Assert.Equal([(TraceReason.Reply, 1), (TraceReason.Established, 0), (TraceReason.Related, 0)],
            events.Select(e => ((TraceReason)e.Reason, e.Direction)));
        Assert.NotEqual(0u, events[0].RuleId); // the rule that admitted the connection
    }
}
