using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Datapath.Tests;

namespace Membrane.Agent.Tests;

/// <summary>
/// ICMP crafted inside a pod against a victim pod that accepts nothing (issue 22, classes 3 and 4): a query of
/// another kind whose id and type mirror the victim's ping, and an ICMP error about the victim's live connection,
/// larger than an error may be, fragmented so that its first fragment is small. Each test first shows that what
/// policy allows arrives, so "not delivered" means dropped.
/// </summary>
[Collection(SandboxGroup.Name)]
public class HostileIcmpTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server";

    public HostileIcmpTests(SandboxFixture sandbox)
        : this(sandbox, "bpf")
    {
    }

    /// <summary>The same attacks with the agent on <paramref name="hostRouting"/> (see the class of that name below).</summary>
    protected HostileIcmpTests(SandboxFixture sandbox, string hostRouting)
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

    private static IPAddress V4(EndpointOutput e) => IPAddress.Parse(e.IPv4!);

    /// <summary>A raw ICMP socket in the pod's namespace that sees every ICMP message delivered to it.</summary>
    private static Socket IcmpListener(string netns)
    {
        var socket = NetworkNamespace.Run(netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp));
        socket.ReceiveTimeout = 300;
        return socket;
    }

    private static void SendIcmp(string netns, IPAddress to, byte[] icmp)
    {
        using var sender = NetworkNamespace.Run(netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp));
        sender.SendTo(icmp, new IPEndPoint(to, 0));
    }

    private static byte[] Query(byte type, ushort id, byte[] marker)
    {
        byte[] body = [(byte)(id >> 8), (byte)id, 0, 1, .. marker];
        return RawFrames.Icmp(type, 0, body);
    }

    [Fact]
    public void AQueryOfAnotherKindDoesNotRideOnAPingsConnection()
    {
        // The client pings the server with echo id 13 (allowed) and accepts nothing; the server may send nothing.
        Import("client-pings-only", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{}]
            egress: [{toEndpoints: [{matchLabels: {app: server}}], icmps: [{fields: [{type: EchoRequest}]}]}]
            """);
        Import("server-silent", "endpointSelector: {matchLabels: {app: server}}\negress: [{}]");
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        using var listener = IcmpListener(client.Netns);

        var ping = RawFrames.NewMarker();
        SendIcmp(client.Netns, V4(server), Query(8, 13, ping));
        Assert.True(PodTraffic.SawMarker(listener, ping), "the echo reply (id 13) must reach the client (else this test sees nothing)");

        // The reverse of the ping's (id 13, type 8) is (type 13, id 8): a timestamp request with id 8 from the server.
        var timestamp = RawFrames.NewMarker();
        SendIcmp(server.Netns, V4(client), Query(13, 8, timestamp));
        Assert.False(PodTraffic.SawMarker(listener, timestamp), "a timestamp request with id 8 rode on the client's echo with id 13");
        var request = RawFrames.NewMarker();
        SendIcmp(server.Netns, V4(client), Query(8, 13, request));
        Assert.False(PodTraffic.SawMarker(listener, request), "an echo request with the ping's own id passed as its reply");

        // Control: allowed by policy, the same timestamp request is delivered, so "not delivered" above was a drop.
        Import("client-pings-only", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{fromEndpoints: [{matchLabels: {app: server}}], icmps: [{fields: [{type: 13}]}]}]
            """);
        Import("server-silent", """
            endpointSelector: {matchLabels: {app: server}}
            egress: [{toEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 13}]}]}]
            """);
        var allowed = RawFrames.NewMarker();
        SendIcmp(server.Netns, V4(client), Query(13, 8, allowed));
        Assert.True(PodTraffic.SawMarker(listener, allowed), "an allowed timestamp request was not seen: the listener would miss a leak");
    }

    [Fact]
    public void AnOversizedIcmpErrorInFragmentsDoesNotPass()
    {
        // The client accepts nothing; it has a live TCP connection to the server, which may send it errors about it.
        Import("client-closed", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{}]
            egress: [{toEndpoints: [{matchLabels: {app: server}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        using var connection = PodTraffic.Connect(client.Netns, V4(server), 80);
        var localPort = (ushort)((IPEndPoint)connection.LocalEndPoint!).Port;
        using var listener = IcmpListener(client.Netns);

        byte[] Error(byte[] marker, int padding)
        {
            var embedded = RawFrames.IpPacket(V4(client), V4(server), 6, RawFrames.TcpSyn(localPort, 80, [.. marker,
                .. new byte[padding]]));
            return RawFrames.IpPacket(V4(server), V4(client), 1, RawFrames.Icmp(3, 1, [0, 0, 0, 0, .. embedded]));
        }

        var small = RawFrames.NewMarker();
        RawFrames.Send(server.Netns, HostilePodTests.FromPod(server, 0x0800, Error(small, 0)));
        Assert.True(PodTraffic.SawMarker(listener, small), "a small error from the connection's peer passes (else this test sees nothing)");

        // 2,000 bytes in two fragments, the first 572 bytes long: each fragment is small, the error is not.
        var large = RawFrames.NewMarker();
        var datagram = Error(large, 2000 - 20 - 8 - 20 - 20 - large.Length);
        Assert.Equal(2000, datagram.Length);
        foreach (var fragment in Fragments(datagram, 552))
        {
            RawFrames.Send(server.Netns, HostilePodTests.FromPod(server, 0x0800, fragment));
        }
        Assert.False(PodTraffic.SawMarker(listener, large), "a 2,000-byte ICMP error in fragments reached the client");

        // Control: allowed by a rule (not as an error about a connection), the same fragments are reassembled and seen.
        Import("client-closed", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{fromEndpoints: [{matchLabels: {app: server}}], icmps: [{fields: [{type: 3}]}]}]
            egress: [{toEndpoints: [{matchLabels: {app: server}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """);
        var ruled = RawFrames.NewMarker();
        foreach (var fragment in Fragments(Error(ruled, 2000 - 20 - 8 - 20 - 20 - ruled.Length), 552))
        {
            RawFrames.Send(server.Netns, HostilePodTests.FromPod(server, 0x0800, fragment));
        }
        Assert.True(PodTraffic.SawMarker(listener, ruled), "fragments a rule allows were not seen: the listener would miss a leak");
    }

    /// <summary>An IPv4 datagram cut into fragments of <paramref name="firstPayload"/> bytes after the header, the rest in one.</summary>
    internal static IEnumerable<byte[]> Fragments(byte[] datagram, int firstPayload)
    {
        var payload = datagram.AsSpan(20).ToArray();
        var id = (ushort)Random.Shared.Next(1, 65535);
        foreach (var (offset, length, more) in new[] { (0, firstPayload, true), (firstPayload, payload.Length - firstPayload, false) })
        {
            var fragment = new byte[20 + length];
            datagram.AsSpan(0, 20).CopyTo(fragment);
            BinaryPrimitives.WriteUInt16BigEndian(fragment.AsSpan(2), (ushort)fragment.Length);
            BinaryPrimitives.WriteUInt16BigEndian(fragment.AsSpan(4), id);
            BinaryPrimitives.WriteUInt16BigEndian(fragment.AsSpan(6), (ushort)((more ? 0x2000 : 0) | offset / 8));
            fragment[10] = fragment[11] = 0;
            BinaryPrimitives.WriteUInt16BigEndian(fragment.AsSpan(10), InternetChecksum.Of(fragment.AsSpan(0, 20)));
            payload.AsSpan(offset, length).CopyTo(fragment.AsSpan(20));
            yield return fragment;
        }
    }
}

/// <summary>Every attack of <see cref="HostileIcmpTests"/> again on the legacy path (<c>--host-routing legacy</c>).</summary>
[Collection(SandboxGroup.Name)]
public sealed class HostileIcmpTestsOnLegacyRouting(SandboxFixture sandbox) : HostileIcmpTests(sandbox, "legacy");
