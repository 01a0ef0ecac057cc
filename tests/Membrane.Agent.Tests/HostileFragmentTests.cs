using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// A verdict remembered for a datagram's fragments must not outlive the policy that gave it (issue 22, class 6): a
/// pod sends the first fragment while policy allows it and the rest after a change that denies it.
/// </summary>
[Collection(SandboxGroup.Name)]
public class HostileFragmentTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server";
    private const ushort Port = 9999;

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
    private static byte[] Datagram(EndpointOutput client, EndpointOutput server, byte[] marker)
    {
        var payload = new byte[1200];
        marker.CopyTo(payload, payload.Length - marker.Length);
        var udp = new byte[8 + payload.Length];
        BinaryPrimitives.WriteUInt16BigEndian(udp, 40000);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(2), Port);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(4), (ushort)udp.Length);
        payload.CopyTo(udp, 8); // checksum 0: none, as IPv4 allows
        return RawFrames.IpPacket(IPAddress.Parse(client.IPv4!), IPAddress.Parse(server.IPv4!), 17, udp);
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
}

/// <summary>Every attack of <see cref="HostileFragmentTests"/> again on the legacy path (<c>--host-routing legacy</c>).</summary>
[Collection(SandboxGroup.Name)]
public sealed class HostileFragmentTestsOnLegacyRouting(SandboxFixture sandbox) : HostileFragmentTests(sandbox, "legacy");
