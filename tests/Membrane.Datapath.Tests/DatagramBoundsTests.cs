using System.Buffers.Binary;
using System.Net;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>
/// What a hostile pod sends to be judged by bytes the receiver never reads, or to ride on state it does not own: a
/// datagram shorter than its frame (a fake header in the trailer), fragmented ICMP errors and neighbour discovery,
/// one ICMP query kind dressed as another, and fragment verdicts that outlive their age or their policy.
/// </summary>
public sealed class DatagramBoundsTests : IDisposable
{
    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    private ulong Malformed() => _h.Datapath.DropCounters()[DropReason.Malformed].Packets;

    private const string ClientTcp80Only = """
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        ingress:
        - toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """;

    /// <summary>Sets the datagram's own length (IPv4 total length or IPv6 payload length) in an Ethernet frame.</summary>
    private static byte[] WithDatagramLength(byte[] frame, int ipBytes)
    {
        var v4 = frame[12] == 0x08;
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(v4 ? 16 : 18), (ushort)(v4 ? ipBytes : ipBytes - 40));
        return frame;
    }

    /// <summary>
    /// A first fragment (or a whole datagram) whose own length ends before its L4 header, with an allowed TCP header
    /// in the frame's trailer: the receiver's stack trims the trailer and reads the real header from the next
    /// fragment, so the trailer must never be judged. Both families, both directions, no fragment header too.
    /// </summary>
    [Fact]
    public void AHeaderInTheTrailerIsNeverJudged()
    {
        _h.Use(Cnp("c", "a", ClientTcp80Only), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(40000, 80))), "the honest SYN passes");
        _h.Datapath.FlushConntrack();
        var malformed = Malformed();

        // IPv6: the fragment header is the datagram's last byte; the "TCP 80" after it is trailer.
        var v6 = V6(IPv6Packet(c6, s6, Tcp, TcpSegment(40001, 80), (44, FragmentHeaderBody(0, true, 91))));
        Assert.False(_h.Sends(WithDatagramLength(v6, 48)), "IPv6 first fragment, chain cut after the fragment header");
        Assert.False(_h.Receives(WithDatagramLength(Swap6(v6, c6, s6), 48)), "the same towards the pod");
        // The chain cut inside a destination-options header behind the fragment header.
        var dst = V6(IPv6Packet(c6, s6, Tcp, TcpSegment(40002, 80), (44, FragmentHeaderBody(0, true, 92)), (60, new byte[6])));
        Assert.False(_h.Sends(WithDatagramLength(dst, 52)), "IPv6 chain cut inside an extension header");
        // Even unfragmented: the TCP header half inside the datagram.
        Assert.False(_h.Sends(WithDatagramLength(Frame(c6, s6, Tcp, TcpSegment(40003, 80)), 40 + 12)), "IPv6 TCP cut by the length");
        // IPv4, first fragment and whole datagram alike.
        var v4 = V4(IPv4Packet(c, s, Tcp, TcpSegment(40004, 80), id: 93, fragment: 0x2000));
        Assert.False(_h.Sends(WithDatagramLength(v4, 24)), "IPv4 first fragment of 4 L4 bytes");
        Assert.False(_h.Sends(WithDatagramLength(Frame(c, s, Tcp, TcpSegment(40005, 80)), 20 + 12)), "IPv4 TCP cut by the length");
        Assert.False(_h.Receives(WithDatagramLength(Frame(s, c, Tcp, TcpSegment(40006, 80)), 20 + 12)), "towards the pod");
        Assert.False(_h.Sends(WithDatagramLength(Frame(c, s, Udp, UdpDatagram(40007, 80)), 20 + 4)), "UDP header cut by the length");
        Assert.Equal(malformed + 8, Malformed());
        // Nothing was remembered for the fragment ids: their later fragments find no verdict.
        Assert.False(_h.Sends(V6(IPv6Packet(c6, s6, Tcp, new byte[16], (44, FragmentHeaderBody(1, false, 91))))));
        Assert.False(_h.Sends(V4(IPv4Packet(c, s, Tcp, new byte[16], id: 93, fragment: 1))));
        // A trailer after a complete datagram is harmless and ignored (Ethernet pads short frames).
        Assert.True(_h.Sends([.. Frame(c, s, Tcp, TcpSegment(40008, 80)), .. new byte[8]]), "a padded frame passes");
        Assert.True(_h.Sends([.. Frame(c6, s6, Tcp, TcpSegment(40009, 80)), .. new byte[8]]));
    }

    private static byte[] Swap6(byte[] frame, IPAddress a, IPAddress b)
    {
        var copy = (byte[])frame.Clone();
        b.GetAddressBytes().CopyTo(copy, 14 + 8);
        a.GetAddressBytes().CopyTo(copy, 14 + 24);
        return copy;
    }

    /// <summary>
    /// An ICMP error whose embedded packet lies in the trailer, beyond the error's own length, relates to nothing:
    /// a pod with egress deny-all may not fake an error about one of its inbound flows that way.
    /// </summary>
    [Fact]
    public void AnEmbeddedPacketInTheTrailerRelatesToNothing()
    {
        _h.Use(Cnp("c", "a", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{fromEndpoints: [{matchLabels: {app: server}}]}]
            egress: [{}]
            """), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        Assert.True(_h.Receives(Frame(s, c, Udp, UdpDatagram(5000, 6000))));
        Assert.True(_h.Receives(Frame(s6, c6, Udp, UdpDatagram(5000, 6000))));
        var received = IPv4Packet(s, c, Udp, UdpDatagram(5000, 6000));
        var received6 = IPv6Packet(s6, c6, Udp, UdpDatagram(5000, 6000));
        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpError(3, 3, received))), "the honest error passes as related");
        Assert.True(_h.Sends(Frame(c6, s6, IcmpV6, IcmpError(1, 4, received6))));
        Assert.False(_h.Sends(WithDatagramLength(Frame(c, s, Icmp, IcmpError(3, 3, received)), 20 + 8)), "IPv4: embedded in trailer");
        Assert.False(_h.Sends(WithDatagramLength(Frame(c6, s6, IcmpV6, IcmpError(1, 4, received6)), 40 + 8)), "IPv6: in trailer");
        // Half of the embedded header inside the datagram is no better.
        Assert.False(_h.Sends(WithDatagramLength(Frame(c6, s6, IcmpV6, IcmpError(1, 4, received6)), 40 + 8 + 44)));
    }

    /// <summary>
    /// An ICMP error is never fragmented by a host (576 and 1280 bytes fit every link), so a fragmented one cannot pass
    /// as related: its first fragment would pass the size check and its later fragments would follow its verdict.
    /// </summary>
    [Fact]
    public void FragmentedIcmpErrorsNeverPassAsRelated()
    {
        _h.Use(Cnp("c", "a", """
            endpointSelector: {matchLabels: {app: client}}
            egress: [{toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            ingress: [{}]
            """), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(43210, 80))));
        Assert.True(_h.Sends(Frame(c6, s6, Tcp, TcpSegment(43211, 80))));
        var sent = IPv4Packet(c, s, Tcp, TcpSegment(43210, 80, TcpAck));
        var sent6 = IPv6Packet(c6, s6, Tcp, TcpSegment(43211, 80, TcpAck));
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpError(3, 3, sent))), "the whole error passes");
        Assert.True(_h.Receives(Frame(s6, c6, IcmpV6, IcmpError(1, 4, sent6))));

        var first = IcmpMessage(3, 3, 0, 0, [.. sent, .. new byte[500]]);
        Assert.False(_h.Receives(V4(IPv4Packet(s, c, Icmp, first, id: 77, fragment: 0x2000))), "first fragment of a 2,000-byte error");
        Assert.False(_h.Receives(V4(IPv4Packet(s, c, Icmp, new byte[1400], id: 77, fragment: 66))), "its later fragment");
        var first6 = IcmpMessage(1, 4, 0, 0, [.. sent6, .. new byte[500]]);
        Assert.False(_h.Receives(V6(IPv6Packet(s6, c6, IcmpV6, first6, (44, FragmentHeaderBody(0, true, 78))))), "IPv6 first fragment");
        Assert.False(_h.Receives(V6(IPv6Packet(s6, c6, IcmpV6, new byte[1400], (44, FragmentHeaderBody(70, false, 78))))));
        // From the pod, the same: an error about a packet it received, fragmented, meets policy (which denies it).
        var received = IPv4Packet(s, c, Tcp, TcpSegment(80, 43210, TcpAck));
        Assert.False(_h.Sends(V4(IPv4Packet(c, s, Icmp, IcmpError(3, 3, received), id: 79, fragment: 0x2000))));
    }

    /// <summary>Neighbour discovery is exempt from policy only whole (RFC 6980 forbids fragmenting it).</summary>
    [Fact]
    public void FragmentedNeighbourDiscoveryIsNotExempt()
    {
        _h.Use(Cnp("lock", "a", "endpointSelector: {matchLabels: {app: client}}\ningress: [{}]\negress: [{}]"), "a/client");
        IPAddress c6 = _h.V6("a/client"), gateway = IPAddress.Parse("fe80::1");
        Assert.True(_h.Sends(HopLimit(Frame(c6, gateway, IcmpV6, IcmpMessage(135, 0)), 255)), "whole: exempt");
        var first = HopLimit(V6(IPv6Packet(c6, gateway, IcmpV6, IcmpMessage(135, 0, body: new byte[64]),
            (44, FragmentHeaderBody(0, true, 81)))), 255);
        Assert.False(_h.Sends(first), "a fragmented NS meets policy");
        Assert.False(_h.Sends(HopLimit(V6(IPv6Packet(c6, gateway, IcmpV6, new byte[64], (44, FragmentHeaderBody(9, false, 81)))), 255)));
        Assert.False(_h.Receives(HopLimit(V6(IPv6Packet(gateway, c6, IcmpV6, IcmpMessage(134, 0, body: new byte[64]),
            (44, FragmentHeaderBody(0, true, 82)))), 255)), "a fragmented RA too");
    }

    /// <summary>
    /// A request never rides on another query's entry: the victim pings with echo id 13 (8, 128), and the peer's
    /// timestamp request with id 8 (its echo request with id 8, its ICMPv6 echo request with id 128) would otherwise
    /// look like the reply. Checked where the victim's ingress is deny-all and where the sender's egress is.
    /// </summary>
    [Fact]
    public void OneQueryKindNeverPassesAsAnother()
    {
        _h.Use(Cnp("c", "a", """
            endpointSelector: {matchLabels: {app: client}}
            egress: [{icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]}]
            ingress: [{}]
            """), "a/client");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpMessage(8, 0, id: 13))));
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(13, 0, id: 8))), "timestamp request id 8 after echo id 13");
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 13))), "the echo reply passes");
        Assert.True(_h.Sends(Frame(c, s, Icmp, IcmpMessage(8, 0, id: 8))));
        Assert.False(_h.Receives(Frame(s, c, Icmp, IcmpMessage(8, 0, id: 8))), "echo request id 8 after echo id 8");
        Assert.True(_h.Receives(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 8))));
        Assert.False(_h.Sends(Frame(c, s, Icmp, IcmpMessage(0, 0, id: 8))), "nor does the pod's own reply ride as a request");
        Assert.True(_h.Sends(Frame(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 128))));
        Assert.False(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(128, 0, id: 128))), "ICMPv6 echo request id 128");
        Assert.True(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(129, 0, id: 128))));
        Assert.True(_h.Sends(Frame(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 160))));
        Assert.False(_h.Receives(Frame(s6, c6, IcmpV6, IcmpMessage(160, 0, id: 128))), "extended echo id 128 after echo id 160");

        // The other side: the server receives pings (its ingress allows them) and may send nothing.
        _h.Use(Cnp("s", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]}]
            egress: [{}]
            """), "a/server");
        Assert.True(_h.Receives(Frame(c, s, Icmp, IcmpMessage(8, 0, id: 13))));
        Assert.False(_h.Sends(Frame(s, c, Icmp, IcmpMessage(13, 0, id: 8))), "past the sender's egress deny-all");
        Assert.True(_h.Sends(Frame(s, c, Icmp, IcmpMessage(0, 0, id: 13))), "the reply passes");
        Assert.True(_h.Receives(Frame(c6, s6, IcmpV6, IcmpMessage(128, 0, id: 128))));
        Assert.False(_h.Sends(Frame(s6, c6, IcmpV6, IcmpMessage(128, 0, id: 128))));
        Assert.True(_h.Sends(Frame(s6, c6, IcmpV6, IcmpMessage(129, 0, id: 128))));
        var entries = _h.Datapath.Conntrack.Entries().Select(e => e.Key).Where(k => k.Protocol is Icmp or IcmpV6).ToList();
        Assert.Equal(new byte[] { 8, 128 }, entries.Select(k => k.Kind).Order().ToArray());
        Assert.All(entries, k => Assert.True(_h.Datapath.Conntrack.Delete(k), "a listed key deletes (the kind is part of it)"));
    }

    /// <summary>
    /// A first fragment's verdict holds for the reassembly window only, and is forgotten when the endpoint's policy
    /// changes (the control plane flushes it with conntrack; here by hand).
    /// </summary>
    [Fact]
    public void FragmentVerdictsAgeAndAreFlushedPerEndpoint()
    {
        _h.Use(Cnp("s", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{toPorts: [{ports: [{port: "9000", protocol: UDP}]}]}]
            """), "a/server");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server");
        Assert.True(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9000, 100), id: 21, fragment: 0x2000))));
        Assert.True(_h.Receives(V4(IPv4Packet(c, s, Udp, new byte[64], id: 21, fragment: 0x2000 | 14))), "a fresh verdict holds");
        var (key, value) = _h.Datapath.Fragments.Entries(DatapathHarness.TestIfIndex).Single();
        Assert.Equal(1, value.Allowed);
        value.Created -= 61UL * KernelTicks.PerSecond;
        _h.Datapath.Fragments.Update(key, value);
        Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, new byte[64], id: 21, fragment: 22))), "61 s later it does not");

        Assert.True(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9000, 100), id: 22, fragment: 0x2000))));
        Assert.Equal(0, _h.Datapath.FlushFragments(new HashSet<uint> { DatapathHarness.TestIfIndex + 1 }));
        Assert.Equal(2, _h.Datapath.FlushFragments(new HashSet<uint> { DatapathHarness.TestIfIndex }));
        Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, new byte[64], id: 22, fragment: 14))), "flushed with the policy");
    }

    /// <summary>
    /// Each endpoint's verdicts live in its own table: a stream of first fragments fills only the sender's (its LRU
    /// evicts its own oldest), and a denied first fragment writes nothing (a sender policy refuses cannot fill a
    /// receiver's table) and takes back what an earlier first fragment with the same identifier was given.
    /// </summary>
    [Fact]
    public void FragmentVerdictsAreKeptPerEndpointAndOnlyForAdmittedDatagrams()
    {
        _h.Use(Cnp("s", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{toPorts: [{ports: [{port: "9000", protocol: UDP}]}]}]
            """), "a/server");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server");
        const uint other = DatapathHarness.TestIfIndex + 6;
        _h.Datapath.Conntrack.AddEndpoint(other);
        try
        {
            var key = new FragmentKey { IfIndex = other, Id = 7, Family = 4, Protocol = Udp };
            _h.Datapath.Fragments.Update(key, new FragmentValue { Created = KernelTicks.Now()!.Value, Allowed = 1 });

            for (var id = 0; id < 3 * (int)FragmentTable.EndpointCapacity; id++)
            {
                var first = V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9000, 100), id: (ushort)(1000 + id), fragment: 0x2000));
                Assert.True(_h.Receives(first));
            }
            Assert.InRange((uint)_h.Datapath.Fragments.Entries(DatapathHarness.TestIfIndex).Count, FragmentTable.EndpointCapacity / 2,
                FragmentTable.EndpointCapacity);
            Assert.Equal(key.Id, Assert.Single(_h.Datapath.Fragments.Entries(other)).Key.Id);

            _h.Datapath.FlushFragments();
            for (var id = 0; id < 100; id++)
            {
                Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9001, 100), id: (ushort)id, fragment: 0x2000))));
            }
            Assert.Empty(_h.Datapath.Fragments.Entries(DatapathHarness.TestIfIndex));

            Assert.True(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9000, 100), id: 5, fragment: 0x2000))));
            Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9001, 100), id: 5, fragment: 0x2000))), "denied");
            Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, new byte[64], id: 5, fragment: 14))),
                "a later fragment after a denied first fragment with its identifier");
        }
        finally
        {
            _h.Datapath.Conntrack.RemoveEndpoint(other);
        }
        Assert.Empty(_h.Datapath.Fragments.Entries(other));
    }

    /// <summary>An endpoint without a fragment table (none was made for it) passes no later fragment.</summary>
    [Fact]
    public void AnEndpointWithoutAFragmentTablePassesNoLaterFragment()
    {
        _h.Use(Cnp("s", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{toPorts: [{ports: [{port: "9000", protocol: UDP}]}]}]
            """), "a/server");
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server");
        Assert.True(_h.Datapath.Fragments.RemoveEndpoint(DatapathHarness.TestIfIndex));
        Assert.True(_h.Receives(V4(IPv4Packet(c, s, Udp, UdpDatagram(1000, 9000, 100), id: 31, fragment: 0x2000))));
        Assert.False(_h.Receives(V4(IPv4Packet(c, s, Udp, new byte[64], id: 31, fragment: 14))));
    }
}
