using System.Buffers.Binary;
using System.Net;
using System.Net.NetworkInformation;
using Membrane.Agent.Sandbox;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>
/// Tunnel mode with host routing: from_pod wraps a packet for another node's pod in VXLAN itself and sends it from the
/// underlay device; the receiving node's from_underlay unwraps what it can deliver to its own pods. The test runs happen
/// in a namespace where the FIB knows an underlay (<see cref="UnderlayFib"/>).
/// </summary>
public sealed class TunnelEncapsulationTests : IDisposable
{
    private static readonly IPAddress ThisNode = UnderlayFib.ThisNode;
    private static readonly IPAddress OtherNode = UnderlayFib.OtherNode;
    private static readonly byte[] TunnelMac = [0x02, 0x6d, 192, 0, 2, 1];
    private static readonly PhysicalAddress PodMac = PhysicalAddress.Parse("02-AA-00-00-00-07");
    private static readonly PhysicalAddress GatewayMac = PhysicalAddress.Parse("02-BB-00-00-00-07");

    private const string ServerPolicy = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: b}}]
          icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]
        ingressDeny:
        - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: b}}]
          icmps: [{fields: [{type: 13}]}]
        """;

    private readonly DatapathHarness _h = new();
    private readonly UnderlayFib _fib = new("mbdp-vxlan");

    public TunnelEncapsulationTests()
    {
        _h.Use(Cnp("p", "a", ServerPolicy), "b/client");
        _h.Policy.Sync(_fib.Pod, _h.Engine.Resolve("a/server").State);
        _h.Datapath.Endpoints.Set(_fib.Pod, _h.Engine.FindEndpoint("a/server")!.Addresses);
        _h.Datapath.LocalDelivery.Set(_fib.Pod, _h.Engine.FindEndpoint("a/server")!.Addresses, new DeliveryMacs(PodMac, GatewayMac));
        _h.Datapath.SetHostRouting(true);
        _h.Datapath.SetTunnelDevice(_fib.Tunnel, TunnelMac);
        _h.Datapath.Tunnels.Sync([(IPNetwork.Parse("10.99.0.0/16"), OtherNode), (IPNetwork.Parse("fd00:99::/64"), OtherNode)]);
    }

    public void Dispose()
    {
        _h.Dispose();
        _fib.Dispose();
    }

    private TestRunResult Run(BpfProgram program, byte[] frame, TestRunContext context) => _fib.Run(() => program.TestRun(frame, context));

    /// <summary>A pod's packet as from_pod meets it: addressed to its gateway, come in on the pod's host-side veth.</summary>
    private TestRunResult Send(byte[] frame, uint gsoSize = 0)
    {
        frame.AsSpan(0, 6).Clear(); // the gateway: the test device's own (all-zero) address
        if (frame[14] >> 4 == 4)
        {
            BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(24), 0);
            BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(24), InternetChecksum.Of(frame.AsSpan(14, 20)));
        }
        return Run(_h.Datapath.FromPod, frame, new TestRunContext(IngressIfIndex: _fib.Pod, GsoSize: gsoSize,
            GsoSegments: gsoSize == 0 ? 0 : 2u));
    }

    private static IPAddress RemotePod(bool v6) => IPAddress.Parse(v6 ? "fd00:99::7" : "10.99.0.7");

    private uint Identity(string pod) => _h.Engine.FindEndpoint(pod)!.Identity.Id;

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void APacketForAnotherNodesPodLeavesWrappedFromTheUnderlayDevice(bool v6)
    {
        var client = v6 ? _h.V6("b/client") : _h.V4("b/client");
        var inner = Frame(client, RemotePod(v6), Tcp, TcpSegment(40000, 80));
        var result = Send(inner.ToArray());

        Assert.Equal(BpfProgram.TcActRedirect, result.ReturnValue);
        var output = result.Output.ToArray();
        Assert.Equal(UnderlayFib.OtherNodeMac, output[..6]);
        Assert.Equal(_fib.UnderlayMac.GetAddressBytes(), output[6..12]);
        Assert.Equal(0x0800, BinaryPrimitives.ReadUInt16BigEndian(output.AsSpan(12)));
        // Outer IPv4: no options, the whole rest of the frame, DF, UDP, this node to the other, a valid checksum.
        var ip = output.AsSpan(14, 20);
        Assert.Equal(0x45, ip[0]);
        Assert.Equal(output.Length - 14, BinaryPrimitives.ReadUInt16BigEndian(ip[2..]));
        Assert.Equal(0x4000, BinaryPrimitives.ReadUInt16BigEndian(ip[6..]));
        Assert.Equal(17, ip[9]);
        Assert.Equal(ThisNode, new IPAddress(ip[12..16]));
        Assert.Equal(OtherNode, new IPAddress(ip[16..20]));
        Assert.Equal(0, InternetChecksum.Of(ip));
        // UDP to the tunnel's port, VXLAN with the client's identity, the inner frame to the other node's tunnel device.
        Assert.Equal(UnderlayNetwork.TunnelPort, BinaryPrimitives.ReadUInt16BigEndian(output.AsSpan(36)));
        Assert.Equal(output.Length - 34, BinaryPrimitives.ReadUInt16BigEndian(output.AsSpan(38)));
        Assert.Equal(0x08000000u, BinaryPrimitives.ReadUInt32BigEndian(output.AsSpan(42)));
        Assert.Equal(Identity("b/client"), BinaryPrimitives.ReadUInt32BigEndian(output.AsSpan(46)) >> 8);
        Assert.Equal(new byte[] { 0x02, 0x6d, 192, 0, 2, 2 }, output[50..56]);
        Assert.Equal(TunnelMac, output[56..62]);
        Assert.Equal(inner[12..14], output[62..64]);
        // One hop spent on the inner packet, its checksum still valid; the rest of it as the pod sent it.
        Assert.Equal(63, output[v6 ? 64 + 7 : 64 + 8]);
        if (!v6)
        {
            Assert.Equal(0, InternetChecksum.Of(output.AsSpan(64, 20)));
        }
        Assert.Equal(inner[(v6 ? 22 : 34)..], output[(64 + (v6 ? 8 : 20))..]);
    }

    [Fact]
    public void WhatTheTunnelDeviceMustSeeIsLeftToTheStack()
    {
        var client = _h.V4("b/client");
        byte[] Segment(int payload = 0) => Frame(client, RemotePod(false), Tcp, TcpSegment(40000, 80, TcpAck, payload));
        Assert.Equal(BpfProgram.TcActOk, Send(HopLimit(Segment(), 1)).ReturnValue); // the node answers time exceeded
        Assert.Equal(BpfProgram.TcActOk, Send(Segment(1500)).ReturnValue);          // over the tunnel's MTU: the device answers
        _fib.ForgetNeighbour();
        Assert.Equal(BpfProgram.TcActOk, Send(Segment()).ReturnValue);              // no neighbour yet: the stack resolves it
        _fib.RestoreNeighbour();
        Assert.Equal(BpfProgram.TcActRedirect, Send(Segment()).ReturnValue);
        _h.Datapath.SetHostRouting(false);
        Assert.Equal(BpfProgram.TcActOk, Send(Segment()).ReturnValue);              // the legacy path: the stack and to_tunnel
    }

    /// <summary>
    /// A VXLAN frame from <paramref name="node"/> to this node, <paramref name="inner"/> with <paramref name="vni"/>.
    /// </summary>
    private static byte[] Vxlan(IPAddress node, uint vni, byte[] inner)
    {
        var frame = new byte[64 + inner.Length - 14];
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(12), 0x0800);
        var ip = frame.AsSpan(14, 20);
        ip[0] = 0x45;
        BinaryPrimitives.WriteUInt16BigEndian(ip[2..], (ushort)(frame.Length - 14));
        ip[8] = 64;
        ip[9] = 17;
        node.GetAddressBytes().CopyTo(ip[12..]);
        ThisNode.GetAddressBytes().CopyTo(ip[16..]);
        BinaryPrimitives.WriteUInt16BigEndian(ip[10..], InternetChecksum.Of(ip));
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(34), 49152);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(36), (ushort)UnderlayNetwork.TunnelPort);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(38), (ushort)(frame.Length - 34));
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(42), 0x08000000);
        BinaryPrimitives.WriteUInt32BigEndian(frame.AsSpan(46), vni << 8);
        TunnelMac.CopyTo(frame, 50); // to this node's tunnel device
        inner.AsSpan(6).CopyTo(frame.AsSpan(56));
        return frame;
    }

    private TestRunResult Receive(byte[] frame, uint gsoSize = 0) => Run(_h.Datapath.FromUnderlay, frame,
        new TestRunContext(GsoSize: gsoSize, GsoSegments: gsoSize == 0 ? 0 : 2u));

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TheReceivingNodeUnwrapsJudgesAndDeliversItsPodsPackets(bool v6)
    {
        var (client, server) = v6 ? (_h.V6("b/client"), _h.V6("a/server")) : (_h.V4("b/client"), _h.V4("a/server"));
        var echo = Frame(client, server, v6 ? IcmpV6 : Icmp, IcmpMessage(v6 ? (byte)128 : (byte)8, 0));
        // From an underlay address that is no node of the cluster: left to the tunnel device (which drops it, counted),
        // untouched.
        var forged = Vxlan(IPAddress.Parse("192.0.2.99"), Identity("b/client"), echo);
        var stranger = Receive(forged);
        Assert.Equal(BpfProgram.TcActOk, stranger.ReturnValue);
        Assert.Equal(forged, stranger.Output.ToArray());

        var delivered = Receive(Vxlan(OtherNode, Identity("b/client"), echo));
        Assert.Equal(BpfProgram.TcActRedirect, delivered.ReturnValue);
        var output = delivered.Output.ToArray();
        Assert.Equal(echo.Length, output.Length);
        Assert.Equal(PodMac.GetAddressBytes(), output[..6]);
        Assert.Equal(GatewayMac.GetAddressBytes(), output[6..12]);
        Assert.Equal(echo[12..14], output[12..14]);
        Assert.Equal(63, output[v6 ? 14 + 7 : 14 + 8]); // one hop on this node
        Assert.Equal(echo[(v6 ? 22 : 34)..], output[(v6 ? 22 : 34)..]);
        Assert.Contains(_h.Datapath.Conntrack.Entries(), e => e.Key.IfIndex == _fib.Pod);
    }

    [Fact]
    public void WhatTheReceiverCannotDeliverItselfGoesOnWrappedOrIsDropped()
    {
        var (client, server) = (_h.V4("b/client"), _h.V4("a/server"));
        byte[] Echo(byte type = 8) => Frame(client, server, Icmp, IcmpMessage(type, 0));
        void LeftWrapped(byte[] frame, uint gso = 0, string why = "")
        {
            var result = Receive(frame, gso);
            Assert.True(result.ReturnValue == BpfProgram.TcActOk, why);
            Assert.True(frame.AsSpan().SequenceEqual(result.Output.Span), why);
        }
        LeftWrapped(Vxlan(OtherNode, Identity("b/client"), HopLimit(Echo(), 1)), why: "TTL 1: the node answers");
        LeftWrapped(Vxlan(OtherNode, Identity("b/client"), Echo()), gso: 1400, why: "segmentation offload: the device unwraps it");
        LeftWrapped(Vxlan(OtherNode, Identity("b/client"), Frame(client, RemotePod(false), Icmp, IcmpMessage(8, 0))),
            why: "no pod of this node");
        var badFlags = Vxlan(OtherNode, Identity("b/client"), Echo());
        badFlags[43] = 1;
        LeftWrapped(badFlags, why: "reserved VXLAN bits set");
        var elsewhere = Vxlan(OtherNode, Identity("b/client"), Echo());
        elsewhere[0] = 0x02;
        LeftWrapped(elsewhere, why: "a frame not addressed to this node");

        // The destination's policy judges with the identity the node sent: a deny, and an identity it does not admit.
        var drops = _h.Datapath.DropCounters()[DropReason.PolicyDeny].Packets;
        Assert.Equal(BpfProgram.TcActShot, Receive(Vxlan(OtherNode, Identity("b/client"), Echo(13))).ReturnValue);
        Assert.Equal(drops + 1, _h.Datapath.DropCounters()[DropReason.PolicyDeny].Packets);
        Assert.Equal(BpfProgram.TcActShot, Receive(Vxlan(OtherNode, Identity("b/other"), Echo())).ReturnValue);
        // A node may not speak as this node's host.
        Assert.Equal(BpfProgram.TcActShot, Receive(Vxlan(OtherNode, 1, Echo())).ReturnValue);
    }

}
