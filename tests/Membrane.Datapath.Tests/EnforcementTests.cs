using System.Net;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>Verdicts of the tc programs on crafted packets, through BPF_PROG_TEST_RUN.</summary>
public sealed class EnforcementTests : IDisposable
{
    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    private const string ServerTcp80AndRange = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "9000", endPort: 9010, protocol: UDP}, {port: "7", protocol: SCTP}]}]
        """;

    private const string ServerPing = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          icmps: [{fields: [{type: 8}, {type: EchoRequest, family: IPv6}, {type: 3, code: 4}]}]
        """;

    private byte[] ToServer(byte protocol, byte[] l4, bool v6 = false) =>
        v6 ? Frame(_h.V6("a/client"), _h.V6("a/server"), protocol, l4) : Frame(_h.V4("a/client"), _h.V4("a/server"), protocol, l4);

    [Fact]
    public void TcpUdpSctpByPortAndRange()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        Assert.True(_h.Receives(ToServer(Tcp, TcpSegment(40000, 80))));
        Assert.False(_h.Receives(ToServer(Tcp, TcpSegment(40001, 81))));
        Assert.True(_h.Receives(ToServer(Udp, UdpDatagram(40002, 9000))));
        Assert.True(_h.Receives(ToServer(Udp, UdpDatagram(40003, 9010))));
        Assert.False(_h.Receives(ToServer(Udp, UdpDatagram(40004, 9011))));
        Assert.False(_h.Receives(ToServer(Udp, UdpDatagram(40005, 8999))));
        Assert.True(_h.Receives(ToServer(Sctp, SctpPacket(40006, 7))));
        Assert.False(_h.Receives(ToServer(Sctp, SctpPacket(40007, 8))));
        Assert.True(_h.Receives(ToServer(Tcp, TcpSegment(40008, 80), v6: true)));
        Assert.False(_h.Receives(ToServer(Tcp, TcpSegment(40009, 81), v6: true)));
    }

    [Fact]
    public void L4PolicyDropsPing_IcmpsRuleAllowsIt()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        Assert.False(_h.Receives(ToServer(Icmp, IcmpMessage(8, 0))));
        Assert.False(_h.Receives(ToServer(IcmpV6, IcmpMessage(128, 0), v6: true)));
        _h.Use(Cnp("p", "a", ServerTcp80AndRange) + Cnp("ping", "a", ServerPing), "a/server");
        Assert.True(_h.Receives(ToServer(Icmp, IcmpMessage(8, 0))));
        Assert.True(_h.Receives(ToServer(IcmpV6, IcmpMessage(128, 0), v6: true)));
        Assert.False(_h.Receives(ToServer(Icmp, IcmpMessage(13, 0))));
        Assert.False(_h.Receives(ToServer(IcmpV6, IcmpMessage(139, 0), v6: true)));
    }

    [Fact]
    public void IcmpCodeRuleMatchesOnlyThatCode()
    {
        _h.Use(Cnp("ping", "a", ServerPing), "a/server");
        var original = IPv4Packet(_h.V4("a/server"), _h.V4("a/client"), Tcp, TcpSegment(1, 2));
        Assert.True(_h.Receives(ToServer(Icmp, IcmpError(3, 4, original))));
        Assert.False(_h.Receives(ToServer(Icmp, IcmpError(3, 1, original))));
    }

    [Fact]
    public void TypeZeroDoesNotMatchEchoRequest()
    {
        _h.Use(Cnp("zero", "a", "endpointSelector: {matchLabels: {app: server}}\ningress: [{icmps: [{fields: [{type: 0}]}]}]"), "a/server");
        Assert.True(_h.Receives(ToServer(Icmp, IcmpMessage(0, 0))));
        Assert.False(_h.Receives(ToServer(Icmp, IcmpMessage(8, 0))));
        Assert.False(_h.Receives(ToServer(Icmp, IcmpMessage(11, 0))));
    }

    [Fact]
    public void DenyRuleBeatsL3L4Allow()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange) + Cnp("deny", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]
            """), "a/server");
        Assert.False(_h.Receives(ToServer(Tcp, TcpSegment(40000, 80))));
        var drops = _h.Datapath.DropCounters();
        Assert.Equal(1ul, drops[Maps.DropReason.PolicyDeny].Packets);
    }

    [Fact]
    public void DenyIcmpTypeFromAnyPeerBeatsL3OnlyAllow()
    {
        _h.Use(Cnp("allow", "a",
            "endpointSelector: {matchLabels: {app: server}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}]}]")
            + Cnp("deny", "a", "endpointSelector: {matchLabels: {app: server}}\ningressDeny: [{icmps: [{fields: [{type: 8}]}]}]"),
                "a/server");
        Assert.False(_h.Receives(ToServer(Icmp, IcmpMessage(8, 0))));
        Assert.True(_h.Receives(ToServer(Icmp, IcmpMessage(13, 0))));
        Assert.True(_h.Receives(ToServer(Tcp, TcpSegment(5, 6))));
    }

    private const string ClientPingsAndConnects_ReceivesNothing = """
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]
        - toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "53", protocol: UDP}]}]
        ingress: [{}]
        """;

    [Fact]
    public void RepliesPassThroughConntrackWithoutARule()
    {
        _h.Use(Cnp("c", "a", ClientPingsAndConnects_ReceivesNothing), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");

        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 77))), "an unsolicited echo reply is policy's business");
        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpMessage(8, 0, id: 77))));
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 77))));
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 78))), "another identifier is another flow");

        Assert.True(_h.Sends(Frame(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 9))));
        Assert.True(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(129, 0, id: 9))));

        Assert.False(_h.Receives(Frame(s, c, Tcp, TcpSegment(80, 43210, TcpSyn | TcpAck))));
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(43210, 80))));
        Assert.True(_h.Receives(Frame(s, c, Tcp, TcpSegment(80, 43210, TcpSyn | TcpAck))));
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(43210, 80, TcpAck))));
        Assert.False(_h.Sends(Frame(c, s, Tcp, TcpSegment(43210, 81))));

        Assert.True(_h.Sends(Frame(c, s, Udp, UdpDatagram(5353, 53))));
        Assert.True(_h.Receives(Frame(s, c, Udp, UdpDatagram(53, 5353))));
    }

    /// <summary>Every ICMP query whose reply carries the request's identifier is tracked like echo, each kind apart.</summary>
    [Fact]
    public void IcmpQueriesOtherThanEchoAreTrackedByKindAndIdentifier()
    {
        _h.Use(Cnp("c", "a", """
            endpointSelector: {matchLabels: {app: client}}
            egress:
            - icmps: [{fields: [{type: Timestamp}, {type: 17}, {type: 8}, {type: 160, family: IPv6}]}]
            ingress: [{}]
            """), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");

        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(14, 0, id: 5))), "an unsolicited timestamp reply is policy's business");
        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpMessage(13, 0, id: 5))));
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpMessage(14, 0, id: 5))), "the timestamp reply passes by conntrack");
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(14, 0, id: 6))), "another identifier is another query");
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 5))), "an echo reply does not ride on a timestamp query");
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(18, 0, id: 5))), "nor an address-mask reply");

        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpMessage(17, 0, id: 5))));
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpMessage(18, 0, id: 5))));
        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpMessage(8, 0, id: 5))), "echo with the same identifier is a query of its own");
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 5))));

        Assert.False(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(161, 0, id: 7))));
        Assert.True(_h.Sends(Frame(c6, s6, IcmpV6, IcmpMessage(160, 0, id: 7))));
        Assert.True(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(161, 0, id: 7))), "extended echo (RFC 8335) over IPv6");
        Assert.False(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(129, 0, id: 7))), "an echo reply does not ride on it");

        Assert.False(_h.Sends(Frame(c, s, Icmp, IcmpMessage(15, 0, id: 9))), "information request: no rule");
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(16, 0, id: 9))), "so its reply has no connection");
    }

    [Fact]
    public void PathMtuErrorsFromARouterAboutATrackedConnectionPass()
    {
        _h.Use(Cnp("c", "a", ClientPingsAndConnects_ReceivesNothing), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        var router = IPAddress.Parse("192.0.2.1");
        var router6 = IPAddress.Parse("2001:db8::1");
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(43210, 80))));
        Assert.True(_h.Sends(Frame(c6, s6, Tcp, TcpSegment(43211, 80))));

        var sent = IPv4Packet(c, s, Tcp, TcpSegment(43210, 80, TcpAck, payload: 1400));
        Assert.True(_h.Receives(Frame(router, c, Icmp, IcmpError(3, 4, sent))), "frag-needed about a tracked connection");
        var untracked = IPv4Packet(c, s, Tcp, TcpSegment(43299, 80, TcpAck));
        Assert.False(_h.Receives(Frame(router, c, Icmp, IcmpError(3, 4, untracked))), "frag-needed about no connection");

        var sent6 = IPv6Packet(c6, s6, Tcp, TcpSegment(43211, 80, TcpAck, payload: 1400));
        Assert.True(_h.Receives(Frame(router6, c6, IcmpV6, IcmpError(2, 0, sent6))), "Packet Too Big about a tracked connection");
        var untracked6 = IPv6Packet(c6, s6, Tcp, TcpSegment(43298, 80, TcpAck));
        Assert.False(_h.Receives(Frame(router6, c6, IcmpV6, IcmpError(2, 0, untracked6))), "Packet Too Big about no connection");
    }

    /// <summary>
    /// The line an ICMP error must cross to pass without a rule: from the peer or a router (no pod's address), about
    /// a packet the pod itself sent, no larger than a host sends; and from the pod only as the receiver of the packet.
    /// </summary>
    [Fact]
    public void IcmpErrorsFromThirdPartiesMeetPolicy()
    {
        _h.Use(Cnp("c", "a", ClientPingsAndConnects_ReceivesNothing), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), o = _h.V4("b/other");
        IPAddress c6 = _h.V6("a/client"), s6 = _h.V6("a/server"), o6 = _h.V6("b/other");
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(43210, 80))));
        Assert.True(_h.Sends(Frame(c6, s6, Tcp, TcpSegment(43211, 80))));
        var sent = IPv4Packet(c, s, Tcp, TcpSegment(43210, 80, TcpAck));
        var sent6 = IPv6Packet(c6, s6, Tcp, TcpSegment(43211, 80, TcpAck));

        // Both sides of the line for the source: the peer and a router pass, a third pod does not.
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpError(3, 3, sent))), "port unreachable from the peer");
        Assert.True(_h.Receives(Frame(IPAddress.Parse("192.0.2.1"), c, Icmp, IcmpError(3, 4, sent))), "from a router");
        Assert.False(_h.Receives(Frame(o, c, Icmp, IcmpError(3, 4, sent))), "from a third pod");
        Assert.True(_h.Receives(Frame(s6, c6, IcmpV6, IcmpError(1, 4, sent6))), "IPv6: from the peer");
        Assert.False(_h.Receives(Frame(o6, c6, IcmpV6, IcmpError(2, 0, sent6))), "IPv6: from a third pod");

        // The size: the start of a packet, not a payload of its own.
        var big = IcmpMessage(3, 4, 0, 0, [.. sent, .. new byte[600]]);
        Assert.False(_h.Receives(Frame(IPAddress.Parse("192.0.2.1"), c, Icmp, big)), "an IPv4 error over 576 bytes");
        var big6 = IcmpMessage(2, 0, 0, 0, [.. sent6, .. new byte[1300]]);
        Assert.False(_h.Receives(Frame(s6, c6, IcmpV6, big6)), "an IPv6 error over 1280 bytes");
        var fits = IcmpMessage(3, 4, 0, 0, [.. sent, .. new byte[500]]);
        Assert.True(_h.Receives(Frame(IPAddress.Parse("192.0.2.1"), c, Icmp, fits)), "an IPv4 error of 548 bytes");

        // The direction: towards the pod, the error is about a packet the pod sent (to its own address).
        var received = IPv4Packet(s, c, Tcp, TcpSegment(80, 43210, TcpAck));
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpError(3, 3, received))), "about a packet the pod received");
        // From the pod, an error about a packet it received, back to that packet's source, passes...
        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpError(3, 3, received))), "the pod reports on a packet it received");
        // ...but not one about its own packet (the pod is no router), nor one sent elsewhere.
        Assert.False(_h.Sends(Frame(c, s, Icmp, IcmpError(3, 3, sent))), "the pod reports on its own packet");
        Assert.False(_h.Sends(Frame(c, o, Icmp, IcmpError(3, 3, received))), "an error sent to a third pod");
    }

    [Fact]
    public void ErrorsAboutRepliesOfAcceptedConnectionsPass()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server");
        Assert.True(_h.Receives(Frame(c, s, Tcp, TcpSegment(40000, 80))));
        // The server's reply to the client hits a small-MTU link; the router reports it to the server.
        var reply = IPv4Packet(s, c, Tcp, TcpSegment(80, 40000, TcpAck, payload: 1400));
        Assert.True(_h.Receives(Frame(IPAddress.Parse("192.0.2.9"), s, Icmp, IcmpError(3, 4, reply))));
    }

    [Fact]
    public void NeighbourDiscoveryPassesUnderDenyAll()
    {
        _h.Use(Cnp("lock", "a", "endpointSelector: {matchLabels: {app: client}}\ningress: [{}]\negress: [{}]"), "a/client");
        IPAddress c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        IPAddress multicast = IPAddress.Parse("ff02::1:ff00:2"), gateway = IPAddress.Parse("fe80::1"),
            linkLocal = IPAddress.Parse("fe80::42");
        foreach (var type in new byte[] { 133, 134, 135, 136 })
        {
            // As the kernel sends it: hop limit 255, from a link-local (or the pod's own) address, to the link.
            Assert.True(_h.Sends(HopLimit(Frame(linkLocal, multicast, IcmpV6, IcmpMessage(type, 0)), 255)), $"sends ND type {type}");
            Assert.True(_h.Sends(HopLimit(Frame(c6, gateway, IcmpV6, IcmpMessage(type, 0)), 255)), $"sends ND type {type} to the gateway");
            Assert.True(_h.Receives(HopLimit(Frame(gateway, c6, IcmpV6, IcmpMessage(type, 0)), 255)), $"receives ND type {type}");
        }
        Assert.True(_h.Sends(HopLimit(Frame(IPAddress.IPv6Any, multicast, IcmpV6, IcmpMessage(135, 0)), 255)),
            "duplicate address detection");
        Assert.False(_h.Sends(Frame(c6, s6, IcmpV6, IcmpMessage(128, 0))));
        Assert.False(_h.Receives(HopLimit(Frame(s6, c6, IcmpV6, IcmpMessage(137, 0)), 255)), "redirect is not neighbour discovery");
    }

    /// <summary>
    /// What a hostile pod sends dressed as neighbour discovery: none of it is exempt from a deny-all policy.
    /// </summary>
    [Fact]
    public void OnlyRealNeighbourDiscoveryIsExempt()
    {
        _h.Use(Cnp("lock", "a", "endpointSelector: {matchLabels: {app: client}}\ningress: [{}]\negress: [{}]"), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        var multicast = IPAddress.Parse("ff02::1:ff00:2");
        // Routed: the hop limit was decremented on the way (or never was 255).
        Assert.False(_h.Receives(HopLimit(Frame(s6, c6, IcmpV6, IcmpMessage(135, 0, body: new byte[64])), 254)), "routed NS with data");
        Assert.False(_h.Receives(HopLimit(Frame(s6, c6, IcmpV6, IcmpMessage(134, 0, body: new byte[64])), 64)), "routed RA with data");
        Assert.False(_h.Sends(HopLimit(Frame(c6, multicast, IcmpV6, IcmpMessage(136, 0)), 64)), "NA with hop limit 64");
        // Hop limit 255 but addressed to another pod: the node would forward it past egress policy.
        Assert.False(_h.Sends(HopLimit(Frame(c6, s6, IcmpV6, IcmpMessage(135, 0, body: new byte[64])), 255)), "NS to a routed address");
        // A code other than 0 is not neighbour discovery (RFC 4861 has receivers discard it).
        Assert.False(_h.Receives(HopLimit(Frame(s6, c6, IcmpV6, IcmpMessage(136, 1)), 255)), "NA with code 1");
        // ICMPv6 numbers over IPv4: protocol 58 in an IPv4 header is no ICMPv6 message at all.
        Assert.False(_h.Receives(HopLimit(Frame(s, c, IcmpV6, IcmpMessage(135, 0, body: new byte[32])), 255)), "IPv4 protocol 58 type 135");
        Assert.False(_h.Sends(HopLimit(Frame(c, s, IcmpV6, IcmpMessage(136, 0)), 255)), "IPv4 protocol 58 type 136, sent");
        // And the other way round: ICMP (protocol 1) inside IPv6.
        Assert.False(_h.Receives(Frame(s6, c6, Icmp, IcmpMessage(0, 0))), "ICMP over IPv6");
        Assert.True(_h.Datapath.DropCounters()[Maps.DropReason.Malformed].Packets >= 3);
    }

    /// <summary>A pod may send only from its own addresses: IPv4, IPv6, and as ARP sender.</summary>
    [Fact]
    public void SpoofedSourcesAreDropped()
    {
        _h.Use("", "a/client"); // no policy: everything the pod may send at all passes
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), o = _h.V4("b/other");
        IPAddress c6 = _h.V6("a/client"), s6 = _h.V6("a/server"), o6 = _h.V6("b/other");
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(40000, 80))));
        Assert.True(_h.Sends(Frame(c6, s6, Tcp, TcpSegment(40000, 80))));
        Assert.False(_h.Sends(Frame(o, s, Tcp, TcpSegment(40001, 80))), "another pod's IPv4 address");
        Assert.False(_h.Sends(Frame(o6, s6, Tcp, TcpSegment(40001, 80))), "another pod's IPv6 address");
        Assert.False(_h.Sends(Frame(IPAddress.Parse("203.0.113.9"), s, Udp, UdpDatagram(1, 53))), "an outside address");
        Assert.False(_h.Sends(Frame(IPAddress.Parse("fe80::42"), s6, Udp, UdpDatagram(1, 53))), "link-local source to a routed address");
        Assert.False(_h.Sends(Frame(IPAddress.IPv6Any, s6, Udp, UdpDatagram(1, 53))), "unspecified source to a routed address");
        Assert.False(_h.Sends(Frame(IPAddress.Any, s, Udp, UdpDatagram(68, 67))), "0.0.0.0");
        // An ICMP error claiming to come from another pod.
        var original = IPv4Packet(s, o, Udp, UdpDatagram(53, 40000));
        Assert.False(_h.Sends(Frame(o, s, Icmp, IcmpError(3, 3, original))), "error sent as another pod");
        // ARP: only for its own address (or a probe from 0.0.0.0).
        Assert.True(_h.Sends(Arp(c, IPAddress.Parse("169.254.1.1"))));
        Assert.True(_h.Sends(Arp(IPAddress.Any, c)), "ARP probe");
        Assert.False(_h.Sends(Arp(s, IPAddress.Parse("169.254.1.1"))), "ARP for another pod's address");
        Assert.True(_h.Receives(Arp(IPAddress.Parse("169.254.1.1"), c, 2)), "the node's ARP reply");
        Assert.Equal(8ul, _h.Datapath.DropCounters()[Maps.DropReason.InvalidSource].Packets);
        // An interface without endpoint addresses may send nothing.
        _h.Datapath.Endpoints.Remove(DatapathHarness.TestIfIndex);
        Assert.False(_h.Sends(Frame(c, s, Tcp, TcpSegment(40002, 80))), "no endpoint entry: fail closed");
    }

    /// <summary>A pod forging its peer's address on a tracked connection does not ride on the connection.</summary>
    [Fact]
    public void ReversedTupleDoesNotRideOnAConnection()
    {
        _h.Use(Cnp("lock", "a",
            "endpointSelector: {matchLabels: {app: client}}\ningress: [{}]\negress: [{toEndpoints: [{matchLabels: {app: server}}], " +
            "toPorts: [{ports: [{port: \"80\", protocol: TCP}]}]}]"), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server");
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(40000, 80))));
        Assert.True(_h.Receives(Frame(s, c, Tcp, TcpSegment(80, 40000, TcpAck))), "the reply");
        // The same tuple, reversed, sent by the pod: it claims to be the server.
        Assert.False(_h.Sends(Frame(s, c, Tcp, TcpSegment(80, 40000, TcpAck))), "the peer's side of the connection, sent by the pod");
        // And the pod's own side arriving from outside is no reply: it meets ingress policy (deny-all).
        Assert.False(_h.Receives(Frame(c, s, Tcp, TcpSegment(40000, 80, TcpAck))), "the pod's side of the connection, received");
    }

    /// <summary>Frames policy cannot judge: VLAN tags (stacked or not), other EtherTypes, garbage ARP.</summary>
    [Fact]
    public void UnknownL3IsDroppedInBothDirections()
    {
        _h.Use(Cnp("lock", "a", "endpointSelector: {matchLabels: {app: client}}\ningress: [{}]\negress: [{}]"), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server");
        var echo = Frame(c, s, Icmp, IcmpMessage(8, 0));
        Assert.False(_h.Sends(Tagged(echo, tags: 2)), "echo behind two VLAN 0 tags");
        Assert.False(_h.Sends(Tagged(echo)), "echo behind one VLAN tag");
        Assert.False(_h.Receives(Tagged(Frame(s, c, Icmp, IcmpMessage(8, 0)), tags: 2)), "tagged, towards the pod");
        Assert.False(_h.Sends(Ethernet(0x88A8, new byte[46])), "802.1ad");
        Assert.False(_h.Sends(Ethernet(0x8035, new byte[46])), "RARP");
        Assert.False(_h.Receives(Ethernet(0x88CC, new byte[46])), "LLDP");
        Assert.False(_h.Sends(Ethernet(0x0806, new byte[28])), "ARP for no protocol");
        Assert.Equal(7ul, _h.Datapath.DropCounters()[Maps.DropReason.UnknownL3].Packets);
    }

    [Fact]
    public void IcmpV6BehindExtensionHeadersIsClassifiedByItsRealType()
    {
        _h.Use(Cnp("ping", "a", ServerPing), "a/server");
        IPAddress c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        var hopByHop = ((byte)0, new byte[] { 5, 2, 0, 0, 1, 0 });
        var destOpts = ((byte)60, new byte[] { 1, 4, 0, 0, 0, 0 });
        var routing = ((byte)43, new byte[] { 0, 0, 0, 0, 0, 0 });
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0), hopByHop, destOpts))));
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 2), hopByHop, routing, destOpts))));
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(139, 0), hopByHop, destOpts))));
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Tcp, TcpSegment(1, 80), destOpts))));
    }

    [Fact]
    public void TheExtensionHeaderWalkStopsAtItsLimitAndRefusesWhatItCannotFinish()
    {
        // A hostile pod stacks extension headers to hide its real protocol behind more than the walk reads, or cuts
        // the first one short (the first is read directly at its fixed offset, the rest through the helper).
        _h.Use(Cnp("ping", "a", ServerPing), "a/server");
        IPAddress c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        var destOpts = ((byte)60, new byte[] { 1, 4, 0, 0, 0, 0 });
        var longHopByHop = ((byte)0, new byte[] { 1, 12, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0 }); // 16 bytes
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 1), Enumerable.Repeat(destOpts, 8).ToArray()))),
            "eight extension headers are walked");
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 2), longHopByHop, destOpts))),
            "a first header longer than 8 bytes moves the rest");
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Tcp, TcpSegment(1, 80), longHopByHop, destOpts))), "TCP 80 is not allowed");
        var malformed = _h.Datapath.DropCounters()[Maps.DropReason.Malformed].Packets;
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 3), Enumerable.Repeat(destOpts, 9).ToArray()))),
            "nine extension headers are more than the walk reads");
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, 0, new byte[] { 58 }))), "a hop-by-hop header cut short");
        // The second header is read directly only behind an 8-byte first one: the limit holds on the other path too.
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 4),
            [longHopByHop, .. Enumerable.Repeat(destOpts, 7)]))), "a long first header and seven more are walked");
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 5),
            [longHopByHop, .. Enumerable.Repeat(destOpts, 8)]))), "a long first header and eight more are too many");
        // A chain that starts with a fragment header is walked in the loop from its first header.
        var atomicFragment = ((byte)44, FragmentHeaderBody(0, false, 90));
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 6),
            [atomicFragment, .. Enumerable.Repeat(destOpts, 7)]))), "a fragment header and seven more are walked");
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 7),
            [atomicFragment, .. Enumerable.Repeat(destOpts, 8)]))), "a fragment header and eight more are too many");
        Assert.Equal(malformed + 4, _h.Datapath.DropCounters()[Maps.DropReason.Malformed].Packets);
    }

    [Fact]
    public void PortsBehindZeroToThreeExtensionHeadersAreReadAlikeAndShortHeadersAreRefused()
    {
        // Behind none, one or two 8-byte extension headers the L4 header is read directly at a constant offset, behind
        // three through the helper: every path must classify alike, and refuse a header cut short or lying about
        // its length, whatever a hostile pod puts there.
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        IPAddress c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        var destOpts = ((byte)60, new byte[] { 1, 4, 0, 0, 0, 0 });
        for (var headers = 0; headers <= 3; headers++)
        {
            var ext = Enumerable.Repeat(destOpts, headers).ToArray();
            var port = (ushort)(41000 + headers);
            Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, Tcp, TcpSegment(port, 80), ext))), $"TCP 80 behind {headers}");
            Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Tcp, TcpSegment(port, 81), ext))), $"TCP 81 behind {headers}");
            Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, Udp, UdpDatagram(port, 9005), ext))), $"UDP 9005 behind {headers}");
            Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Udp, UdpDatagram(port, 9011), ext))), $"UDP 9011 behind {headers}");
            var malformed = _h.Datapath.DropCounters()[Maps.DropReason.Malformed].Packets;
            var shortTcp = TcpSegment(port, 80)[..12]; // ports and sequence number, no data offset or flags
            Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Tcp, shortTcp, ext))), $"TCP header cut short behind {headers}");
            var lyingTcp = TcpSegment(port, 80);
            lyingTcp[12] = 0x40; // a data offset of 16 bytes: shorter than a TCP header
            Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Tcp, lyingTcp, ext))), $"TCP data offset 4 behind {headers}");
            Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Udp, UdpDatagram(port, 9005).AsSpan(0, 6), ext))),
                $"UDP cut short behind {headers}");
            Assert.Equal(malformed + 3, _h.Datapath.DropCounters()[Maps.DropReason.Malformed].Packets);
        }
    }

    [Fact]
    public void LaterFragmentsFollowTheirFirstFragment()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        // Allowed datagram: first fragment carries UDP 9000, the later one no L4 header.
        Assert.True(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9000, 100), id: 11, fragment: 0x2000))));
        Assert.True(_h.Receives(V4(IPv4Packet(c, s, Udp, new byte[64], id: 11, fragment: 14))));
        // Denied datagram: the later fragment is dropped too.
        Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 53, 100), id: 12, fragment: 0x2000))));
        Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, new byte[64], id: 12, fragment: 14))));
        // A later fragment whose first was never seen is dropped, even if its bytes look like an allowed header.
        Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9000), id: 13, fragment: 14))));
        // IPv6 fragment headers.
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, Udp, UdpDatagram(1000, 9001, 100), (44, FragmentHeaderBody(0, true, 77))))));
        Assert.True(_h.Receives(V6(IPv6Packet(c6, s6, Udp, new byte[64], (44, FragmentHeaderBody(14, false, 77))))));
        Assert.False(_h.Receives(V6(IPv6Packet(c6, s6, Udp, new byte[64], (44, FragmentHeaderBody(14, false, 78))))));
        Assert.Equal(3ul, _h.Datapath.DropCounters()[Maps.DropReason.Fragment].Packets);
    }

    [Fact]
    public void TruncatedAndMalformedPacketsAreDropped()
    {
        _h.Use("", "a/server"); // no policy: everything well-formed is allowed
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        Assert.True(_h.Receives(Frame(c, s, Tcp, TcpSegment(1, 80))));
        var full = V4(IPv4Packet(c, s, Tcp, TcpSegment(1, 80)));
        Assert.False(_h.Receives(full[..(14 + 20 + 10)]), "TCP header cut short");
        // (The kernel's test run refuses frames shorter than an IPv4 header, so "cut short" is an IHL of 60 bytes.)
        var shortHeader = V4(IPv4Packet(c, s, Tcp, []));
        shortHeader[14] = 0x4f;
        Assert.False(_h.Receives(shortHeader), "IPv4 header longer than the packet");
        var badIhl = (byte[])full.Clone();
        badIhl[14] = 0x43;
        Assert.False(_h.Receives(badIhl), "IHL below 5");
        var longer = (byte[])full.Clone();
        longer[16] = 0x10;
        Assert.False(_h.Receives(longer), "total length beyond the frame");
        var v6 = V6(IPv6Packet(c6, s6, Udp, UdpDatagram(1, 2)));
        v6[14 + 4] = 0x40;
        Assert.False(_h.Receives(v6), "IPv6 payload length beyond the frame");
        Assert.False(_h.Receives(Frame(c, s, Icmp, new byte[4])), "ICMP header cut short");
        Assert.False(_h.Receives(Frame(c, s, Udp, new byte[6])), "UDP header cut short");
        Assert.True(_h.Receives(Arp(IPAddress.Parse("169.254.1.1"), s)), "ARP is not IP and passes");
        Assert.Equal(7ul, _h.Datapath.DropCounters()[Maps.DropReason.Malformed].Packets);
    }

    [Fact]
    public void UnenforcedDirectionAndWorldPeers()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        Assert.True(_h.Sends(Frame(_h.V4("a/server"), IPAddress.Parse("203.0.113.5"), Udp, UdpDatagram(1, 53))), "egress is not enforced");
        Assert.False(_h.Receives(Frame(IPAddress.Parse("203.0.113.5"), _h.V4("a/server"), Tcp, TcpSegment(1, 80))),
            "world is not the client");
    }

    [Fact]
    public void PolicyEntryCountersCountAllowedNewFlows()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        Assert.True(_h.Receives(ToServer(Tcp, TcpSegment(40000, 80))));
        Assert.True(_h.Receives(ToServer(Tcp, TcpSegment(40001, 80))));
        var entry = _h.Policy.Dump(DatapathHarness.TestIfIndex).Single(e => e.Key.PortProtocol == "80/TCP");
        Assert.Equal(2ul, entry.Value.Packets);
        Assert.True(entry.Value.Bytes > 100);
    }
}
