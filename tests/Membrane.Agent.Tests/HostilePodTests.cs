using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Datapath.Maps;

namespace Membrane.Agent.Tests;

/// <summary>
/// Packets crafted inside a pod, on real veths through the real agent: forged sources, VLAN tags, neighbour
/// discovery look-alikes and ICMP errors from a third pod. Each test first shows that its capture sees a frame
/// that policy lets through, so "not seen" means dropped, not "not looked at".
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class HostilePodTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server", Other = "e2e-b/other";
    private static readonly string NodeNetns = $"{SandboxFixture.Prefix}-node";

    public HostilePodTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
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
    private static byte[] FromPod(EndpointOutput pod, ushort etherType, byte[] payload) =>
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
}
