using System.Net;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.Policy.Tests.Cluster;

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
        _h.Use(Cnp("allow", "a", "endpointSelector: {matchLabels: {app: server}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}]}]")
            + Cnp("deny", "a", "endpointSelector: {matchLabels: {app: server}}\ningressDeny: [{icmps: [{fields: [{type: 8}]}]}]"), "a/server");
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
        var multicast = IPAddress.Parse("ff02::1:ff00:2");
        foreach (var type in new byte[] { 133, 134, 135, 136 })
        {
            Assert.True(_h.Sends(Frame(c6, multicast, IcmpV6, IcmpMessage(type, 0))), $"sends ND type {type}");
            Assert.True(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(type, 0))), $"receives ND type {type}");
        }
        Assert.False(_h.Sends(Frame(c6, s6, IcmpV6, IcmpMessage(128, 0))));
        Assert.False(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(137, 0))), "redirect is not neighbour discovery");
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
        Assert.True(_h.Receives(Ethernet(0x0806, new byte[28])), "ARP is not IP and passes");
        Assert.Equal(7ul, _h.Datapath.DropCounters()[Maps.DropReason.Malformed].Packets);
    }

    [Fact]
    public void UnenforcedDirectionAndWorldPeers()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        Assert.True(_h.Sends(Frame(_h.V4("a/server"), IPAddress.Parse("203.0.113.5"), Udp, UdpDatagram(1, 53))), "egress is not enforced");
        Assert.False(_h.Receives(Frame(IPAddress.Parse("203.0.113.5"), _h.V4("a/server"), Tcp, TcpSegment(1, 80))), "world is not the client");
    }

    [Fact]
    public void PolicyEntryCountersCountAllowedNewFlows()
    {
        _h.Use(Cnp("p", "a", ServerTcp80AndRange), "a/server");
        Assert.True(_h.Receives(ToServer(Tcp, TcpSegment(40000, 80))));
        Assert.True(_h.Receives(ToServer(Tcp, TcpSegment(40001, 80))));
        var entry = _h.Datapath.Policy.Dump(DatapathHarness.TestIfIndex).Single(e => e.Key.PortProtocol == "80/TCP");
        Assert.Equal(2ul, entry.Value.Packets);
        Assert.True(entry.Value.Bytes > 100);
    }
}
