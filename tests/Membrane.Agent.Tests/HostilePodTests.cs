using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Tests;

namespace Membrane.Agent.Tests;

/// <summary>
/// Packets crafted inside a pod, on real veths through the real agent: forged sources, VLAN tags, neighbour
/// discovery look-alikes and ICMP errors from a third pod. Each test first shows that its capture sees a frame
/// that policy lets through, so "not seen" means dropped, not "not looked at".
/// </summary>
[Collection(SandboxGroup.Name)]
public class HostilePodTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server", Other = "e2e-b/other";
    private static readonly string NodeNetns = $"{SandboxFixture.Prefix}-node";

    public HostilePodTests(SandboxFixture sandbox)
        : this(sandbox, "bpf")
    {
    }

    /// <summary>The same attacks with the agent on <paramref name="hostRouting"/> (see the class of that name below).</summary>
    protected HostilePodTests(SandboxFixture sandbox, string hostRouting)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        _s = sandbox;
        _s.Reset(hostRouting);
    }

    private void Import(string name, string spec)
    {
        var r = _s.Apply(SandboxFixture.Cnp(name, spec), "import");
        Assert.True(r.Code == 0, r.Err);
    }

    private ulong Drops(DropReason reason)
    {
        var status = JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out, AgentJsonContext.Default.StatusResponse)!;
        return status.Drops.GetValueOrDefault(DropReasons.Describe(reason));
    }

    /// <summary>A frame from the pod to the node (the next hop of everything it sends).</summary>
    internal static byte[] FromPod(EndpointOutput pod, ushort etherType, byte[] payload) =>
        RawFrames.Ethernet(RawFrames.Link(NodeNetns, pod.Interface).Mac, RawFrames.Link(pod.Netns, "eth0").Mac, etherType, payload);

    private static IPAddress V4(EndpointOutput e) => IPAddress.Parse(e.IPv4!);

    private static IPAddress V6(EndpointOutput e) => IPAddress.Parse(e.IPv6!);

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void ASynWithAnotherPodsSourceIsDroppedAtTheSender(bool v6)
    {
        // The server accepts port 80 from "other" only; the client pretends to be "other".
        Import("server-from-other", """
            endpointSelector: {matchLabels: {app: server}}
            ingress:
            - fromEndpoints: [{matchLabels: {app: other, io.kubernetes.pod.namespace: e2e-b}}]
              toPorts: [{ports: [{port: "80", protocol: TCP}]}]
            """);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server), other = _s.Endpoint(Other);
        var (etherType, src, dst) = v6 ? ((ushort)0x86DD, V6(other), V6(server)) : ((ushort)0x0800, V4(other), V4(server));
        using var capture = RawFrames.Listen(server.Netns);

        var genuine = RawFrames.NewMarker();
        RawFrames.Send(other.Netns, FromPod(other, etherType, RawFrames.IpPacket(src, dst, 6, RawFrames.TcpSyn(41000, 80, genuine))));
        Assert.True(capture.Saw(genuine), "the genuine SYN from other must arrive (else this test sees nothing)");

        var before = Drops(DropReason.InvalidSource);
        var forged = RawFrames.NewMarker();
        RawFrames.Send(client.Netns, FromPod(client, etherType, RawFrames.IpPacket(src, dst, 6, RawFrames.TcpSyn(41001, 80, forged))));
        Assert.False(capture.Saw(forged), "a SYN with other's source address, sent by the client, reached the server");
        Assert.True(Drops(DropReason.InvalidSource) > before, "the forged SYN is counted as an invalid source");
    }

    [Fact]
    public void StackedVlanTagsDoNotCarryAPingPastDenyAll()
    {
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        using var capture = RawFrames.Listen(server.Netns);
        byte[] Echo(byte[] marker) => FromPod(client, 0x0800, RawFrames.IpPacket(V4(client), V4(server), 1, RawFrames.Icmp(8, 0, [0, 7, 0,
            1, .. marker])));

        var plain = RawFrames.NewMarker();
        RawFrames.Send(client.Netns, Echo(plain));
        Assert.True(capture.Saw(plain), "an untagged echo arrives while no policy selects the client");

        Import("client-deny-all", "endpointSelector: {matchLabels: {app: client}}\negress: [{}]");
        var before = Drops(DropReason.UnknownL3);
        foreach (var tags in new[] { 1, 2 })
        {
            var tagged = RawFrames.NewMarker();
            RawFrames.Send(client.Netns, RawFrames.Tagged(Echo(tagged), tags));
            Assert.False(capture.Saw(tagged, 1000), $"an echo behind {tags} VLAN 0 tag(s) passed an egress deny-all");
        }
        Assert.True(Drops(DropReason.UnknownL3) >= before + 2, "tagged frames are counted as unknown L3");
    }

    [Fact]
    public void NeighbourDiscoveryLookAlikesMeetPolicy()
    {
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        using var capture = RawFrames.Listen(server.Netns);

        // As a pod sends them: hop limit 255, a target address, then whatever payload the pod wants delivered.
        bool Arrives(bool v6, byte type)
        {
            var marker = RawFrames.NewMarker();
            byte[] body = [0, 0, 0, 0, .. V6(server).GetAddressBytes(), .. marker];
            var packet = v6
                ? RawFrames.IpPacket(V6(client), V6(server), 58, RawFrames.Icmp(type, 0, body), hops: 255)
                : RawFrames.IpPacket(V4(client), V4(server), 58, RawFrames.Icmp(type, 0, body), hops: 255);
            RawFrames.Send(client.Netns, FromPod(client, v6 ? (ushort)0x86DD : (ushort)0x0800, packet));
            return capture.Saw(marker, 1000);
        }

        Assert.True(Arrives(v6: true, 135), "without policy, a routed neighbour solicitation arrives (else this test sees nothing)");
        // ICMPv6 numbers in an IPv4 packet are no message at all: dropped as malformed, policy or not.
        Assert.False(Arrives(v6: false, 135), "IPv4 protocol 58 type 135 arrived");
        Import("server-deny-all", "endpointSelector: {matchLabels: {app: server}}\ningress: [{}]");
        Assert.False(Arrives(v6: false, 135), "IPv4 protocol 58 type 135 passed an ingress deny-all");
        Assert.False(Arrives(v6: true, 135), "a routed neighbour solicitation with data passed an ingress deny-all");
        Assert.False(Arrives(v6: true, 134), "a routed router advertisement with data passed an ingress deny-all");
    }

    [Fact]
    public void IcmpErrorsAboutALiveConnectionFromAThirdPodMeetPolicy()
    {
        // The client accepts nothing; it has a live TCP connection to the server.
        Import("client-closed", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{}]
            egress: [{toEndpoints: [{matchLabels: {app: server}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server), other = _s.Endpoint(Other);
        using var connection = NetworkNamespace.Run(client.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream,
            ProtocolType.Tcp));
        connection.Connect(V4(server), 80);
        var localPort = (ushort)((IPEndPoint)connection.LocalEndPoint!).Port;
        using var listener = NetworkNamespace.Run(client.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw,
            ProtocolType.Icmp));
        listener.ReceiveTimeout = 1000;

        bool Delivered(string fromNetns)
        {
            var marker = RawFrames.NewMarker();
            // Destination unreachable (host) about the client's segment: its IP header, 8 bytes of TCP, then data.
            var embedded = RawFrames.IpPacket(V4(client), V4(server), 6, RawFrames.TcpSyn(localPort, 80, marker));
            var error = RawFrames.Icmp(3, 1, [0, 0, 0, 0, .. embedded]);
            using var sender = NetworkNamespace.Run(fromNetns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw,
                ProtocolType.Icmp));
            sender.SendTo(error, new IPEndPoint(V4(client), 0));
            var buffer = new byte[2048];
            var deadline = DateTime.UtcNow.AddMilliseconds(1000);
            while (DateTime.UtcNow < deadline)
            {
                try
                {
                    var n = listener.Receive(buffer);
                    if (buffer.AsSpan(0, n).IndexOf(marker) >= 0)
                    {
                        return true;
                    }
                }
                catch (SocketException)
                {
                    return false;
                }
            }
            return false;
        }

        Assert.True(Delivered(server.Netns), "an error from the connection's peer passes without a rule");
        Assert.False(Delivered(other.Netns), "an error about the client's connection, sent by a third pod, passed an ingress deny-all");
    }

    /// <summary>
    /// A pod sets the packet mark (SO_MARK, it has CAP_NET_ADMIN in its namespace) to the tunnel's magic byte and an
    /// allowed identity: crossing the veth clears the mark, so the node never takes it for a tunnel identity.
    /// </summary>
    [Fact]
    public void APodCannotClaimAnIdentityThroughThePacketMark()
    {
        Import("server-echo-from-other", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: other, io.kubernetes.pod.namespace: e2e-b}}], icmps: [{fields: [{type: 8}]}]}]
            """);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server), other = _s.Endpoint(Other);

        bool Echoed(EndpointOutput from, uint mark)
        {
            using var socket = NetworkNamespace.Run(from.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw,
                ProtocolType.Icmp));
            if (mark != 0)
            {
                socket.SetRawSocketOption(1 /* SOL_SOCKET */, 36 /* SO_MARK */, BitConverter.GetBytes(mark));
            }
            socket.ReceiveTimeout = 1000;
            var marker = RawFrames.NewMarker();
            socket.SendTo(RawFrames.Icmp(8, 0, [0x12, 0x34, 0, 1, .. marker]), new IPEndPoint(V4(server), 0));
            var buffer = new byte[2048];
            var deadline = DateTime.UtcNow.AddMilliseconds(1000);
            while (DateTime.UtcNow < deadline)
            {
                try
                {
                    var n = socket.Receive(buffer);
                    if (n > 20 && buffer[20] == 0 && buffer.AsSpan(0, n).IndexOf(marker) >= 0)
                    {
                        return true;
                    }
                }
                catch (SocketException)
                {
                    return false;
                }
            }
            return false;
        }

        Assert.True(Echoed(other, 0), "the allowed pod's echo is answered");
        var before = Drops(DropReason.Policy);
        Assert.False(Echoed(client, 0x4d000000u | other.Identity), "a pod claimed another identity through the packet mark");
        Assert.True(Drops(DropReason.Policy) > before);
    }

    /// <summary>
    /// The node is the host at every address a pod reaches it on: the IPv6 gateway fe80::1, the host end's own
    /// link-local address and the all-nodes multicast group, as well as 169.254.1.1. A pod allowed the world but not
    /// the host reaches none of them (a UDP socket of the node namespace listens on all of them).
    /// </summary>
    [Fact]
    public void APodAllowedTheWorldDoesNotReachTheNodeAtItsLinkScopedAddresses()
    {
        EndpointOutput client = _s.Endpoint(Client);
        var hostEnd = Addresses(NodeNetns, client.Interface).First(a => a.IsIPv6LinkLocal && !a.Equals(IPAddress.Parse("fe80::1")));
        var eth0 = RawFrames.Link(client.Netns, "eth0").IfIndex;
        IPAddress[] targets = [new(IPAddress.Parse("fe80::1").GetAddressBytes(), eth0), new(hostEnd.GetAddressBytes(), eth0),
            new(IPAddress.Parse("ff02::1").GetAddressBytes(), eth0), IPAddress.Parse("169.254.1.1")];
        using var node = NetworkNamespace.Run(NodeNetns, () => new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram,
            ProtocolType.Udp));
        node.DualMode = true;
        node.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
        var port = ((IPEndPoint)node.LocalEndPoint!).Port;

        bool Reaches(IPAddress target)
        {
            using var socket = NetworkNamespace.Run(client.Netns, () => new Socket(target.AddressFamily, SocketType.Dgram,
                ProtocolType.Udp));
            var marker = RawFrames.NewMarker();
            socket.SendTo(marker, new IPEndPoint(target, port));
            return Receives(node, marker);
        }

        Import("client-to-host", "endpointSelector: {matchLabels: {app: client}}\negress: [{toEntities: [host]}]");
        foreach (var target in targets)
        {
            Assert.True(Reaches(target), $"allowed the host, the client reaches the node at {target} (else this test sees nothing)");
        }
        Assert.True(_s.Apply(SandboxFixture.Cnp("client-to-host", "endpointSelector: {matchLabels: {app: client}}\negress: " +
            "[{toEntities: [world]}, {toCIDR: [0.0.0.0/0, ::/0]}]"), "import").Code == 0);
        foreach (var target in targets)
        {
            Assert.False(Reaches(target), $"allowed only the world, the client reached the node at {target}");
        }
    }

    /// <summary>
    /// An IPv6 first fragment whose datagram ends between two extension headers, with the second header and an allowed
    /// UDP header in the frame's trailer; the second fragment brings the real second header and UDP header (another
    /// port). Linux reassembles the two (its check that a first fragment holds the whole chain gives up on a header it
    /// cannot read: measured on this kernel with two plain namespaces), so judging the trailer let a pod allowed UDP to
    /// one port of the host deliver a datagram to another. Now the first fragment is malformed, and the second follows.
    /// </summary>
    [Fact]
    public void AFirstFragmentCutInItsHeaderChainDoesNotReachTheNode()
    {
        EndpointOutput client = _s.Endpoint(Client);
        var nodeAddress = Addresses(NodeNetns, "lo").First(a => a.AddressFamily == AddressFamily.InterNetworkV6
            && !a.Equals(IPAddress.IPv6Loopback));
        using var node = NetworkNamespace.Run(NodeNetns, () => new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram,
            ProtocolType.Udp));
        node.Bind(new IPEndPoint(IPAddress.IPv6Any, 0));
        var port = (ushort)((IPEndPoint)node.LocalEndPoint!).Port;
        const ushort allowedPort = 9;

        // Two fragments of one datagram: two 8-byte destination-options headers, then the UDP datagram.
        bool Delivered(bool honest, uint id)
        {
            var marker = RawFrames.NewMarker();
            // Each header holds one option of an experimental type a receiver skips (RFC 4727).
            byte[] optionsA = [60, 0, 0x1e, 4, 0, 0, 0, 0], optionsB = [17, 0, 0x1e, 4, 0, 0, 0, 0];
            var udp = new byte[8 + marker.Length];
            BinaryPrimitives.WriteUInt16BigEndian(udp, 40000);
            BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(2), port);
            BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(4), (ushort)udp.Length);
            marker.CopyTo(udp, 8);
            byte[] pseudo = [.. V6(client).GetAddressBytes(), .. nodeAddress.GetAddressBytes(), 0, 0, 0, (byte)udp.Length, 0, 0, 0, 17,
                .. udp];
            BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(6), InternetChecksum.Of(pseudo));
            byte[] Fragment(ushort offsetUnits, bool more, ReadOnlySpan<byte> data, int datagramBytes)
            {
                byte[] fragment = [60, 0, (byte)(offsetUnits >> 5), (byte)(offsetUnits << 3 | (more ? 1 : 0)), .. BitConverter.GetBytes(id),
                    .. data];
                var packet = RawFrames.IpPacket(V6(client), nodeAddress, 44, fragment);
                BinaryPrimitives.WriteUInt16BigEndian(packet.AsSpan(4), (ushort)(8 + datagramBytes));
                return packet;
            }
            // Honest: the first fragment holds both headers and the UDP header. Hostile: it ends after the first
            // header; its trailer holds the second and a UDP header to the allowed port.
            var decoy = (byte[])udp.Clone();
            BinaryPrimitives.WriteUInt16BigEndian(decoy.AsSpan(2), allowedPort);
            var first = honest ? Fragment(0, true, [.. optionsA, .. optionsB, .. udp.AsSpan(0, 8)], 24)
                : Fragment(0, true, [.. optionsA, .. optionsB, .. decoy], 8);
            var second = honest ? Fragment(3, false, udp.AsSpan(8), udp.Length - 8)
                : Fragment(1, false, [.. optionsB, .. udp], 8 + udp.Length);
            RawFrames.Send(client.Netns, FromPod(client, 0x86DD, first));
            RawFrames.Send(client.Netns, FromPod(client, 0x86DD, second));
            return Receives(node, marker);
        }

        Assert.True(Delivered(honest: true, 0x1001), "without policy the honest fragments reach the node (else this test sees nothing)");
        Import("client-udp9-to-host", $"endpointSelector: {{matchLabels: {{app: client}}}}\negress: [{{toEntities: [host], toPorts: " +
            $"[{{ports: [{{port: \"{allowedPort}\", protocol: UDP}}]}}]}}]");
        var before = Drops(DropReason.Malformed);
        Assert.False(Delivered(honest: false, 0x1003), "a first fragment judged by its trailer carried UDP to another port of the node");
        Assert.False(Delivered(honest: true, 0x1004), "the honest datagram to a port policy does not allow");
        Assert.True(Drops(DropReason.Malformed) > before, "the cut first fragment is counted as malformed");
    }

    /// <summary>The addresses of a device in a namespace.</summary>
    internal static List<IPAddress> Addresses(string netns, string device)
    {
        using var doc = JsonDocument.Parse(Ip.Run("-n", netns, "-j", "addr", "show", "dev", device));
        return doc.RootElement[0].GetProperty("addr_info").EnumerateArray()
            .Select(a => IPAddress.Parse(a.GetProperty("local").GetString()!)).ToList();
    }

    /// <summary>True as soon as the socket receives a datagram that is the marker; false after 1.5 s.</summary>
    private static bool Receives(Socket socket, byte[] marker)
    {
        var buffer = new byte[2048];
        var deadline = DateTime.UtcNow.AddMilliseconds(1500);
        while (DateTime.UtcNow < deadline)
        {
            socket.ReceiveTimeout = Math.Max(1, (int)(deadline - DateTime.UtcNow).TotalMilliseconds);
            try
            {
                if (buffer.AsSpan(0, socket.Receive(buffer)).SequenceEqual(marker))
                {
                    return true;
                }
            }
            catch (SocketException)
            {
                return false;
            }
        }
        return false;
    }
}

/// <summary>Every attack of <see cref="HostilePodTests"/> again on the legacy path (<c>--host-routing legacy</c>).</summary>
[Collection(SandboxGroup.Name)]
public sealed class HostilePodTestsOnLegacyRouting(SandboxFixture sandbox) : HostilePodTests(sandbox, "legacy");
