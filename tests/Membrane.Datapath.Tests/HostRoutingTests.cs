using System.Buffers.Binary;
using System.Net;
using System.Net.NetworkInformation;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Policy.Resolution;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>
/// Host routing: from_pod judges a packet for a pod of this node by that pod's ingress policy too and redirects it into
/// the pod's namespace. Under BPF_PROG_TEST_RUN the sender is the endpoint at ifindex 1 and the destination a second
/// endpoint at <see cref="Destination"/>: an existing interface of this namespace, whose MTU the program checks (the
/// redirect is only returned by a test run, never carried out, so nothing is sent there).
/// </summary>
public sealed class HostRoutingTests : IDisposable
{
    private static readonly uint Destination = (uint)NetworkInterface.GetAllNetworkInterfaces()
        .First(i => i.NetworkInterfaceType != NetworkInterfaceType.Loopback).GetIPProperties().GetIPv4Properties().Index;

    private const string Policies = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: b}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "53", protocol: UDP}]}]
        - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: b}}]
          icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]
        ingressDeny:
        - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: b}}]
          toPorts: [{ports: [{port: "81", protocol: TCP}]}]
        - fromEndpoints: [{matchLabels: {app: client, k8s:io.kubernetes.pod.namespace: b}}]
          icmps: [{fields: [{type: 13}]}]
        """;

    private static readonly PhysicalAddress PodMac = PhysicalAddress.Parse("02-AA-00-00-00-07");
    private static readonly PhysicalAddress GatewayMac = PhysicalAddress.Parse("02-BB-00-00-00-07");

    private readonly DatapathHarness _h = new();

    public HostRoutingTests()
    {
        _h.Use(Cnp("p", "a", Policies), "b/client");
        _h.Policy.Sync(Destination, _h.Engine.Resolve("a/server").State);
        _h.Datapath.Endpoints.Set(Destination, _h.Engine.FindEndpoint("a/server")!.Addresses);
        _h.Datapath.LocalDelivery.Set(Destination, _h.Engine.FindEndpoint("a/server")!.Addresses, new DeliveryMacs(PodMac, GatewayMac));
        _h.Datapath.SetHostRouting(true);
    }

    public void Dispose() => _h.Dispose();

    /// <summary>A frame as a pod sends it to its gateway: addressed to the device's own MAC (loopback's, all zeros).</summary>
    private static byte[] ToGateway(byte[] frame)
    {
        frame.AsSpan(0, 6).Clear();
        if ((frame[14] >> 4) == 4)
        {
            BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(24), 0);
            BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(24), InternetChecksum.Of(frame.AsSpan(14, 20)));
        }
        return frame;
    }


    private TestRunResult Send(byte[] frame) => _h.Datapath.FromPod.TestRun(frame);

    private (IPAddress Client, IPAddress Server) Addresses(bool v6) =>
        v6 ? (_h.V6("b/client"), _h.V6("a/server")) : (_h.V4("b/client"), _h.V4("a/server"));

    public static TheoryData<string, bool, byte, byte, ushort, bool> Kinds => new()
    {
        // name, IPv6, protocol, ICMP type or 0, destination port, delivered
        { "TCP 80 allowed", false, Tcp, 0, 80, true },
        { "TCP 81 denied by a deny rule", false, Tcp, 0, 81, false },
        { "TCP 22 no rule", false, Tcp, 0, 22, false },
        { "UDP 53 allowed", false, Udp, 0, 53, true },
        { "UDP 54 no rule", false, Udp, 0, 54, false },
        { "echo allowed", false, Icmp, 8, 0, true },
        { "timestamp denied by a deny rule", false, Icmp, 13, 0, false },
        { "address mask request no rule", false, Icmp, 17, 0, false },
        { "TCP 80 allowed, IPv6", true, Tcp, 0, 80, true },
        { "TCP 81 denied, IPv6", true, Tcp, 0, 81, false },
        { "UDP 53 allowed, IPv6", true, Udp, 0, 53, true },
        { "echo allowed, IPv6", true, IcmpV6, 128, 0, true },
        { "extended echo no rule, IPv6", true, IcmpV6, 160, 0, false },
    };

    private static byte[] L4(byte protocol, byte type, ushort port) => protocol switch
    {
        Tcp => TcpSegment(40000, port),
        Udp => UdpDatagram(40000, port),
        _ => IcmpMessage(type, 0),
    };

    [Theory]
    [MemberData(nameof(Kinds))]
    public void TheDestinationsIngressPolicyIsJudgedAtTheSource(string name, bool v6, byte protocol, byte type, ushort port, bool delivered)
    {
        var (client, server) = Addresses(v6);
        _h.Datapath.SetEvents(drops: true, verdicts: true);
        var result = Send(ToGateway(Frame(client, server, protocol, L4(protocol, type, port))));

        Assert.True(result.ReturnValue == (delivered ? BpfProgram.TcActRedirect : BpfProgram.TcActShot),
            $"{name}: verdict {result.ReturnValue}");
        var events = _h.Events();
        var ingress = Assert.Single(events, e => e.Direction == (byte)WireDirection.Ingress);
        Assert.Equal(Destination, ingress.IfIndex); // reported as the destination's, as to_pod would
        Assert.Equal(delivered ? (byte)EventType.Verdict : (byte)EventType.Drop, ingress.Type);
        var drops = _h.Datapath.DropCountersByDirection();
        Assert.Equal(delivered ? 0ul : 1ul, drops[(DropReason.Policy, WireDirection.Ingress)].Packets
            + drops[(DropReason.PolicyDeny, WireDirection.Ingress)].Packets);
        // Tracked in both endpoints' tables when delivered (ICMP errors and replies find them on either side).
        var tracked = _h.Datapath.Conntrack.Entries().Select(e => (e.Key.IfIndex, e.Value.Direction)).ToList();
        if (delivered)
        {
            Assert.Contains((DatapathHarness.TestIfIndex, (byte)WireDirection.Egress), tracked);
            Assert.Contains((Destination, (byte)WireDirection.Ingress), tracked);
        }
        else
        {
            Assert.DoesNotContain(tracked, t => t.IfIndex == Destination);
        }
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public void TheDeliveredFrameIsRoutedOneHop(bool v6)
    {
        var (client, server) = Addresses(v6);
        var sent = ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 80)));
        var result = Send(sent);

        Assert.Equal(BpfProgram.TcActRedirect, result.ReturnValue);
        var output = result.Output.ToArray();
        Assert.Equal(PodMac.GetAddressBytes(), output[..6]);
        Assert.Equal(GatewayMac.GetAddressBytes(), output[6..12]);
        Assert.Equal(63, output[v6 ? 14 + 7 : 14 + 8]);
        if (!v6)
        {
            Assert.Equal(0, InternetChecksum.Of(output.AsSpan(14, 20))); // the TTL's decrement folded into the checksum
        }
        // Nothing else changed: with the hop and the checksum put back, the rest is the frame as sent.
        output[v6 ? 14 + 7 : 14 + 8] = 64;
        output[24] = sent[24];
        output[25] = sent[25];
        Assert.Equal(sent[12..], output[12..]);
        var (ingress, egress) = _h.Datapath.Forwarded();
        Assert.Equal((1ul, 1ul), (ingress.Packets, egress.Packets));
    }

    [Fact]
    public void RepliesAndLaterPacketsRideTheEntriesTheShortcutMade()
    {
        var (client, server) = Addresses(false);
        Assert.Equal(BpfProgram.TcActRedirect, Send(ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 80)))).ReturnValue);
        Assert.Equal(BpfProgram.TcActRedirect, Send(ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 80, TcpAck)))).ReturnValue);
        // The server's reply, on the node's stack, meets the client's to_pod: the client's egress entry admits it.
        Assert.True(_h.Receives(Frame(server, client, Tcp, TcpSegment(80, 40000, TcpAck))));
        var serverSide = Assert.Single(_h.Datapath.Conntrack.Entries(), e => e.Key.IfIndex == Destination);
        Assert.Equal(2ul, serverSide.Value.Packets);
    }

    private ConntrackValue Entry(uint ifIndex) => Assert.Single(_h.Datapath.Conntrack.Entries(), e => e.Key.IfIndex == ifIndex).Value;

    /// <summary>A TCP connection from the client to the server's port 80, opened and acknowledged through the shortcut.</summary>
    private byte[] Established()
    {
        var (client, server) = Addresses(false);
        Assert.Equal(BpfProgram.TcActRedirect, Send(ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 80)))).ReturnValue);
        // A hop limit of 255: each delivered run takes one (a test run reruns the frame as the last run left it).
        var ack = ToGateway(HopLimit(Frame(client, server, Tcp, TcpSegment(40000, 80, TcpAck)), 255));
        Assert.Equal(BpfProgram.TcActRedirect, Send(ack).ReturnValue); // judged by the server's side, which marks the entry
        Assert.NotEqual(0, Entry(DatapathHarness.TestIfIndex).PeerGeneration);
        return ack;
    }

    [Fact]
    public void AnAdmittedConnectionSkipsTheDestinationsLookupWithinATick()
    {
        var ack = Established();
        var before = (Client: Entry(DatapathHarness.TestIfIndex).Packets, Server: Entry(Destination).Packets);
        for (var batch = 0; batch < 80; batch++)
        {
            Assert.Equal(BpfProgram.TcActRedirect, _h.Datapath.FromPod.TestRun(ack, repeat: 250).ReturnValue);
        }

        // Every packet is the client's; the server's entry sees the first of each tick (a run of 20,000 spans a few).
        var client = Entry(DatapathHarness.TestIfIndex).Packets - before.Client;
        var server = Entry(Destination).Packets - before.Server;
        Assert.Equal(20_000ul, client);
        Assert.InRange(server, 0ul, 2_000ul);
        var (ingress, _) = _h.Datapath.Forwarded();
        Assert.True(ingress.Packets >= 20_002ul, $"{ingress.Packets} delivered"); // each one counted as delivered
    }

    [Fact]
    public void APolicyChangeEndsTheShortcutForTheVeryNextPacket()
    {
        var ack = Established();
        // What the agent does when the server's policy stops admitting TCP 80: the map, the connection forgotten on
        // the server's side, then a new generation.
        var state = _h.Engine.Resolve("a/server").State;
        _h.Policy.Sync(Destination, new MapState(state.Entries.Where(e => e.Key.Protocol != Tcp).ToDictionary()));
        Assert.True(_h.Datapath.Conntrack.Delete(_h.Datapath.Conntrack.Entries().Single(e => e.Key.IfIndex == Destination).Key));
        _h.Datapath.AdvanceGeneration();

        Assert.Equal(BpfProgram.TcActShot, _h.Datapath.FromPod.TestRun(ack, repeat: 5_000).ReturnValue);
        // Not one of them rode the mark: the refusal unmarked the client's entry, so each packet met the server's policy.
        Assert.Equal(5_000ul, _h.Datapath.DropCountersByDirection()[(DropReason.Policy, WireDirection.Ingress)].Packets);
        Assert.Equal(0, Entry(DatapathHarness.TestIfIndex).PeerGeneration);
    }

    [Fact]
    public void OpeningAndClosingPacketsAlwaysMeetTheDestination()
    {
        var ack = Established();
        var (client, server) = Addresses(false);
        var fin = ToGateway(HopLimit(Frame(client, server, Tcp, TcpSegment(40000, 80, TcpAck | 0x01)), 255));
        var before = Entry(Destination).Packets;
        Assert.Equal(BpfProgram.TcActRedirect, _h.Datapath.FromPod.TestRun(fin, repeat: 100).ReturnValue);
        Assert.Equal(before + 100, Entry(Destination).Packets);
        Assert.NotEqual(0, Entry(Destination).Flags & ConntrackValue.SeenFinForward); // the server's entry knows it closes
        Assert.Equal(BpfProgram.TcActRedirect, Send(ack).ReturnValue);
    }

    public static TheoryData<string, Func<byte[], byte[]>> StackPaths => new()
    {
        { "TTL 1: the node answers time exceeded", f => HopLimit(f, 1) },
        { "a frame not addressed to the gateway", f => { f[0] = 0x02; return f; } },
    };

    [Theory]
    [MemberData(nameof(StackPaths))]
    public void WhatTheNodeMustSeeTakesTheStack(string name, Func<byte[], byte[]> change)
    {
        ArgumentNullException.ThrowIfNull(change);
        var (client, server) = Addresses(false);
        var frame = change(ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 80))));
        Assert.True(Send(frame).ReturnValue == BpfProgram.TcActOk, name);
        Assert.DoesNotContain(_h.Datapath.Conntrack.Entries(), e => e.Key.IfIndex == Destination);
    }

    [Fact]
    public void APacketTooBigForTheDestinationsLinkTakesTheStack()
    {
        // The node's forwarding answers it with fragmentation needed, which the sender must see (path MTU discovery).
        var (client, server) = Addresses(false);
        byte[] Segment(int payload) => ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 80, TcpAck, payload)));
        Assert.Equal(BpfProgram.TcActOk, Send(Segment(1600)).ReturnValue);
        Assert.Equal(BpfProgram.TcActRedirect, Send(Segment(1400)).ReturnValue);
        // A frame within IPv6's minimum link MTU fits every pod link unasked.
        Assert.Equal(BpfProgram.TcActRedirect, Send(Segment(1000)).ReturnValue);
        // A GSO packet is judged by its segments, as the node's forwarding does: whole within the link it fits; longer,
        // segments over the link's MTU do not (BPF_PROG_TEST_RUN leaves the transport header unset, which makes every
        // segment too big: only the refusal can be shown here; real TCP takes the shortcut in the end-to-end tests).
        TestRunResult Gso(int payload, uint size) =>
            _h.Datapath.FromPod.TestRun(Segment(payload), new TestRunContext(GsoSize: size, GsoSegments: 2));
        Assert.Equal(BpfProgram.TcActRedirect, Gso(1000, 1600).ReturnValue);
        Assert.Equal(BpfProgram.TcActOk, Gso(3000, 1600).ReturnValue);
    }

    [Fact]
    public void FragmentsTakeTheStack()
    {
        var (client, server) = Addresses(false);
        var first = ToGateway(V4(IPv4Packet(client, server, Udp, UdpDatagram(40000, 53, payload: 16), id: 9, fragment: 0x2000)));
        Assert.Equal(BpfProgram.TcActOk, Send(first).ReturnValue);
        var later = ToGateway(V4(IPv4Packet(client, server, Udp, new byte[16], id: 9, fragment: 3)));
        Assert.Equal(BpfProgram.TcActOk, Send(later).ReturnValue);
    }

    [Fact]
    public void AnUnknownOrRemovedDestinationTakesTheStack()
    {
        var (client, server) = Addresses(false);
        Assert.Equal(2, _h.Datapath.LocalDelivery.Remove(Destination));
        Assert.Equal(BpfProgram.TcActOk, Send(ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 80)))).ReturnValue);
        Assert.DoesNotContain(_h.Datapath.Conntrack.Entries(), e => e.Key.IfIndex == Destination);
    }

    [Fact]
    public void LegacyRoutingLeavesTheIngressVerdictToTheDestinationsHook()
    {
        _h.Datapath.SetHostRouting(false);
        var (client, server) = Addresses(false);
        Assert.Equal(BpfProgram.TcActOk, Send(ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 22)))).ReturnValue);
        Assert.DoesNotContain(_h.Datapath.Conntrack.Entries(), e => e.Key.IfIndex == Destination);
    }

    [Fact]
    public void TheDestinationsAuditModeAppliesAtTheSource()
    {
        _h.Datapath.Endpoints.Set(Destination, _h.Engine.FindEndpoint("a/server")!.Addresses, audit: true);
        var (client, server) = Addresses(false);
        Assert.Equal(BpfProgram.TcActRedirect, Send(ToGateway(Frame(client, server, Tcp, TcpSegment(40000, 22)))).ReturnValue);
        Assert.Equal(1ul, _h.Datapath.AuditCounters()[(WireDirection.Ingress, WireMatchKind.None)].Packets);
        Assert.All(_h.Datapath.DropCounters(), d => Assert.Equal(0ul, d.Value.Packets));
    }

    [Fact]
    public void APodsHopLimitOf255DoesNotPassForTheNodesNeighbourDiscovery()
    {
        // Towards a pod, hop limit 255 proves an on-link sender (the node); routed by the node it would arrive with 254.
        var (client, server) = Addresses(v6: true);
        var solicitation = HopLimit(ToGateway(Frame(client, server, IcmpV6, IcmpMessage(135, 0))), 255);
        Assert.Equal(BpfProgram.TcActShot, Send(solicitation).ReturnValue);
        Assert.Equal(1ul, _h.Datapath.DropCountersByDirection()[(DropReason.Policy, WireDirection.Ingress)].Packets);
    }

    [Fact]
    public void AForgedSourceIsDroppedBeforeAnyDelivery()
    {
        var server = _h.V4("a/server");
        var other = _h.V4("b/other");
        Assert.Equal(BpfProgram.TcActShot, Send(ToGateway(Frame(other, server, Tcp, TcpSegment(40000, 80)))).ReturnValue);
        Assert.Equal(1ul, _h.Datapath.DropCounters()[DropReason.InvalidSource].Packets);
    }

    private static readonly byte[] TunnelMac = [0x02, 0x6d, 192, 0, 2, 1];

    /// <summary>Tunnel mode: other nodes' pod prefixes routed into the tunnel device (here <see cref="Destination"/>).</summary>
    private void UseTunnel()
    {
        _h.Datapath.Tunnels.Sync([(IPNetwork.Parse("10.99.0.0/16"), IPAddress.Parse("192.0.2.2")),
            (IPNetwork.Parse("fd00:99::/64"), IPAddress.Parse("192.0.2.2"))]);
        _h.Datapath.SetTunnelDevice(Destination, TunnelMac);
    }

    private static IPAddress RemotePod(bool v6) => IPAddress.Parse(v6 ? "fd00:99::7" : "10.99.0.7");

    [Fact]
    public void AHostilePodsForgedOrDeniedTunnelTrafficNeverReachesTheTunnel()
    {
        UseTunnel();
        // A forged source: dropped by the sender's source check before any forwarding.
        var forged = ToGateway(Frame(_h.V4("b/other"), RemotePod(false), Tcp, TcpSegment(40000, 80)));
        Assert.Equal(BpfProgram.TcActShot, Send(forged).ReturnValue);
        Assert.Equal(1ul, _h.Datapath.DropCounters()[DropReason.InvalidSource].Packets);
        // The sender's own egress policy still decides first: a pod whose egress admits nothing sends nothing across.
        _h.Use(Cnp("q", "b", "endpointSelector: {matchLabels: {app: client}}\negress: [{toEndpoints: [{matchLabels: {app: nobody}}]}]"),
            "b/client");
        UseTunnel();
        Assert.Equal(BpfProgram.TcActShot, Send(ToGateway(Frame(Addresses(false).Client, RemotePod(false), Tcp, TcpSegment(40001, 80))))
            .ReturnValue);
    }
}
