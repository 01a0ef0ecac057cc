using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// A verdict remembered for a datagram's fragments must not outlive the policy that gave it (issue 22, class 6): a
/// pod sends the first fragment while policy allows it and the rest after a change that denies it. Nor may one pod's
/// stream of fragmented datagrams push another pod's datagram in flight out of the verdicts (each endpoint has its
/// own table).
/// </summary>
[Collection(SandboxGroup.Name)]
public class HostileFragmentTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server", Other = "e2e-b/other";
    private const ushort Port = 9999;
    private const int FloodDatagrams = 50_000;
    private static readonly string NodeNetns = $"{SandboxFixture.Prefix}-node";

    public HostileFragmentTests(SandboxFixture sandbox)
        : this(sandbox, "bpf")
    {
    }

    /// <summary>The same attacks with the agent on <paramref name="hostRouting"/> (see the class of that name below).</summary>
    protected HostileFragmentTests(SandboxFixture sandbox, string hostRouting)
    {
        ArgumentNullException.ThrowIfNull(sandbox);
        _s = sandbox;
        _s.Reset(hostRouting);
    }

    private void ServerAccepts(ushort port)
    {
        var r = _s.Apply(SandboxFixture.Cnp("server-udp", $$$"""
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "{{{port}}}", protocol: UDP}]}]}]
            """), "import");
        Assert.True(r.Code == 0, r.Err);
    }

    /// <summary>A UDP datagram from the client to the server's port, 1,200 bytes of payload with the marker at the end.</summary>
    private static byte[] Datagram(EndpointOutput client, EndpointOutput server, byte[] marker) =>
        Datagram(IPAddress.Parse(client.IPv4!), IPAddress.Parse(server.IPv4!), Port, marker);

    private static byte[] Datagram(IPAddress source, IPAddress destination, ushort port, byte[] marker)
    {
        var payload = new byte[1200];
        marker.CopyTo(payload, payload.Length - marker.Length);
        var udp = new byte[8 + payload.Length];
        BinaryPrimitives.WriteUInt16BigEndian(udp, 40000);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(2), port);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(4), (ushort)udp.Length);
        payload.CopyTo(udp, 8); // checksum 0: none, as IPv4 allows
        return RawFrames.IpPacket(source, destination, 17, udp);
    }

    [Fact]
    public void FragmentsSentAfterAPolicyChangeMeetTheNewPolicy()
    {
        ServerAccepts(Port);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        using var socket = NetworkNamespace.Run(server.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Dgram,
            ProtocolType.Udp));
        socket.Bind(new IPEndPoint(IPAddress.Any, Port));
        socket.ReceiveTimeout = 300;

        var allowed = RawFrames.NewMarker();
        foreach (var fragment in HostileIcmpTests.Fragments(Datagram(client, server, allowed), 600))
        {
            RawFrames.Send(client.Netns, HostilePodTests.FromPod(client, 0x0800, fragment));
        }
        Assert.True(PodTraffic.SawMarker(socket, allowed), "both fragments under the allowing policy arrive (else this test sees nothing)");

        // The first fragment while the policy allows the port; the rest after it no longer does.
        var late = RawFrames.NewMarker();
        var fragments = HostileIcmpTests.Fragments(Datagram(client, server, late), 600).ToList();
        RawFrames.Send(client.Netns, HostilePodTests.FromPod(client, 0x0800, fragments[0]));
        ServerAccepts(Port + 1);
        RawFrames.Send(client.Netns, HostilePodTests.FromPod(client, 0x0800, fragments[1]));
        Assert.False(PodTraffic.SawMarker(socket, late),
            "the datagram was completed by a fragment that rode on a verdict the policy no longer gives");
    }

    /// <summary>
    /// Another pod's first fragment is admitted to the node; then the client sends 50,000 fragmented datagrams to the
    /// server (its egress allows them): 100,000 first-fragment verdicts (its egress, the server's ingress), more than
    /// the one table all endpoints once shared held (16,384). The other pod's last fragment must still complete its
    /// datagram: the flood filled only the client's and the server's own tables.
    /// </summary>
    [Fact]
    public void AFloodOfFragmentedDatagramsLeavesAnotherPodsDatagramInFlight()
    {
        Assert.True(_s.Apply(SandboxFixture.Cnp("victim", """
            endpointSelector: {matchLabels: {app: other}}
            egress: [{toEntities: [host]}]
            """), "import").Code == 0);
        Assert.True(_s.Apply(SandboxFixture.Cnp("flooder", """
            endpointSelector: {matchLabels: {app: client}}
            egress: [{toEndpoints: [{matchLabels: {app: server}}]}]
            """), "import").Code == 0);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server), other = _s.Endpoint(Other);
        var nodeAddress = HostilePodTests.Addresses(NodeNetns, "lo")
            .First(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));
        using var node = NetworkNamespace.Run(NodeNetns, () => new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp));
        node.Bind(new IPEndPoint(nodeAddress, 0));
        node.ReceiveTimeout = 300;
        var port = (ushort)((IPEndPoint)node.LocalEndPoint!).Port;

        var before = RawFrames.NewMarker();
        foreach (var fragment in HostileIcmpTests.Fragments(Datagram(IPAddress.Parse(other.IPv4!), nodeAddress, port, before), 600))
        {
            RawFrames.Send(other.Netns, HostilePodTests.FromPod(other, 0x0800, fragment));
        }
        Assert.True(PodTraffic.SawMarker(node, before), "the other pod's fragments reach the node (else this test sees nothing)");

        var marker = RawFrames.NewMarker();
        var fragments = HostileIcmpTests.Fragments(Datagram(IPAddress.Parse(other.IPv4!), nodeAddress, port, marker), 600).ToList();
        RawFrames.Send(other.Netns, HostilePodTests.FromPod(other, 0x0800, fragments[0]));

        // The client's stack fragments each 2,000-byte datagram (the pod's MTU is 1,500); every one has its own id.
        using var flooder = NetworkNamespace.Run(client.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Dgram,
            ProtocolType.Udp));
        var sink = new IPEndPoint(IPAddress.Parse(server.IPv4!), 20000);
        var payload = new byte[2000];
        var watch = System.Diagnostics.Stopwatch.StartNew();
        for (var i = 0; i < FloodDatagrams; i++)
        {
            flooder.SendTo(payload, sink);
        }
        watch.Stop();
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(20), $"the flood of {FloodDatagrams} datagrams took {watch.Elapsed}");

        RawFrames.Send(other.Netns, HostilePodTests.FromPod(other, 0x0800, fragments[1]));
        Assert.True(PodTraffic.SawMarker(node, marker),
            $"the other pod's datagram in flight lost its first fragment's verdict to the client's flood ({watch.Elapsed})");
    }
}

/// <summary>Every attack of <see cref="HostileFragmentTests"/> again on the legacy path (<c>--host-routing legacy</c>).</summary>
[Collection(SandboxGroup.Name)]
public sealed class HostileFragmentTestsOnLegacyRouting(SandboxFixture sandbox) : HostileFragmentTests(sandbox, "legacy");
