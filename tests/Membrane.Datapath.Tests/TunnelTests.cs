using System.Net;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>
/// Tunnel mode on crafted packets: an identity reaches to_pod only in the mark from_underlay sets on the tunnel device
/// (magic byte + 24 bits), from_underlay believes only tunnel metadata from known nodes, to_tunnel sends only to a known
/// node.
/// </summary>
public sealed class TunnelTests : IDisposable
{
    private const uint Magic = 0x4d000000;
    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    private const string ServerFromClient = """
        endpointSelector: {matchLabels: {app: server}}
        ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 8}]}]}]
        """;

    private static readonly IPAddress Remote = IPAddress.Parse("10.99.0.7"); // a remote pod: in no ipcache entry

    private bool Receives(byte[] frame, uint mark) => _h.Datapath.ToPod.TestRun(frame, mark).ReturnValue == BpfProgram.TcActOk;

    [Fact]
    public void AnIdentityFromTheTunnelMarkDecidesIngress()
    {
        _h.Use(Cnp("p", "a", ServerFromClient), "a/server");
        var client = _h.Engine.FindEndpoint("a/client")!.Identity.Id;
        var other = _h.Engine.FindEndpoint("b/other")!.Identity.Id;
        var ping = Frame(Remote, _h.V4("a/server"), Icmp, IcmpMessage(8, 0, id: 1));
        Assert.False(Receives(ping, 0));                  // unknown source address: world
        Assert.True(Receives(ping, Magic | client));      // the tunnel said: app=client
        Assert.False(Receives(Frame(Remote, _h.V4("a/server"), Icmp, IcmpMessage(8, 0, id: 2)), Magic | other));
        // A mark without the magic byte carries no identity (any other user of the mark cannot grant access).
        Assert.False(Receives(Frame(Remote, _h.V4("a/server"), Icmp, IcmpMessage(8, 0, id: 3)), client));
        Assert.False(Receives(Frame(Remote, _h.V4("a/server"), Icmp, IcmpMessage(8, 0, id: 4)), 0x4c000000 | client));
    }

    [Fact]
    public void TheMarkNeverChangesWhatAPodMaySend()
    {
        _h.Use(Cnp("p", "a", "endpointSelector: {matchLabels: {app: client}}\negress: [{toEndpoints: [{matchLabels: {app: other}}]}]"),
            "a/client");
        var server = _h.Engine.FindEndpoint("a/server")!.Identity.Id;
        var other = _h.Engine.FindEndpoint("b/other")!.Identity.Id;
        var toServer = Frame(_h.V4("a/client"), _h.V4("a/server"), Icmp, IcmpMessage(8, 0));
        Assert.NotEqual(BpfProgram.TcActOk, _h.Datapath.FromPod.TestRun(toServer, Magic | other).ReturnValue);
        Assert.NotEqual(BpfProgram.TcActOk, _h.Datapath.FromPod.TestRun(toServer, Magic | server).ReturnValue);
    }

    [Fact]
    public void TrafficOnTheTunnelDeviceWithoutTunnelMetadataIsDropped()
    {
        _h.Use(Cnp("p", "a", ServerFromClient), "a/server");
        var before = _h.Datapath.DropCounters()[DropReason.Tunnel].Packets;
        // A frame that reached the tunnel device without coming out of a tunnel (no metadata): no identity is believed.
        // BPF_PROG_TEST_RUN runs the program on the loopback device (ifindex 1): here, the tunnel device.
        var frame = Frame(Remote, _h.V4("a/server"), Icmp, IcmpMessage(8, 0));
        Assert.Equal(BpfProgram.TcActOk, _h.Datapath.FromUnderlay.TestRun(frame).ReturnValue); // not the tunnel device yet
        _h.Datapath.SetTunnelDevice(1, [0x02, 0x6d, 192, 0, 2, 1]);
        Assert.Equal(BpfProgram.TcActShot, _h.Datapath.FromUnderlay.TestRun(frame).ReturnValue);
        Assert.Equal(BpfProgram.TcActShot, _h.Datapath.FromUnderlay.TestRun(frame, Magic | 300).ReturnValue);
        Assert.Equal(before + 2, _h.Datapath.DropCounters()[DropReason.Tunnel].Packets);
        _h.Datapath.SetHostRouting(true);
        Assert.Equal(BpfProgram.TcActShot, _h.Datapath.FromUnderlay.TestRun(frame).ReturnValue);
        Assert.Equal(before + 3, _h.Datapath.DropCounters()[DropReason.Tunnel].Packets);
    }

    [Fact]
    public void ToTunnelSendsOnlyToANodeThatHostsTheDestination()
    {
        _h.Use(Cnp("p", "a", ServerFromClient), "a/server");
        var frame = Frame(_h.V4("a/client"), Remote, Icmp, IcmpMessage(8, 0));
        var frame6 = Frame(_h.V6("a/client"), IPAddress.Parse("fd00:99::7"), IcmpV6, IcmpMessage(128, 0));
        Assert.Equal(BpfProgram.TcActShot, _h.Datapath.ToTunnel.TestRun(frame).ReturnValue);
        _h.Datapath.Tunnels.Sync([(IPNetwork.Parse("10.99.0.0/16"), IPAddress.Parse("192.0.2.2")),
            (IPNetwork.Parse("fd00:99::/64"), IPAddress.Parse("192.0.2.2"))]);
        Assert.Equal(BpfProgram.TcActOk, _h.Datapath.ToTunnel.TestRun(frame).ReturnValue);
        Assert.Equal(BpfProgram.TcActOk, _h.Datapath.ToTunnel.TestRun(frame6).ReturnValue);
        Assert.Equal([IPAddress.Parse("192.0.2.2")], _h.Datapath.Tunnels.Nodes());
        Assert.Equal(2, _h.Datapath.Tunnels.Routes().Count);
        // A node that leaves takes its prefixes and its trust with it.
        _h.Datapath.Tunnels.Sync([]);
        Assert.Equal(BpfProgram.TcActShot, _h.Datapath.ToTunnel.TestRun(frame).ReturnValue);
        Assert.Empty(_h.Datapath.Tunnels.Nodes());
        Assert.Empty(_h.Datapath.Tunnels.Routes());
        // Not an IP packet: nothing to route.
        Assert.Equal(BpfProgram.TcActShot, _h.Datapath.ToTunnel.TestRun(Arp(_h.V4("a/client"), Remote)).ReturnValue);
    }

    /// <summary>
    /// Three nodes: two IPv6 prefixes that share their first bytes are two routes (their keys once compared equal and
    /// the sync failed on every node of a three-node cluster), and native routing flags them for from_pod.
    /// </summary>
    [Fact]
    public void PrefixesOfSeveralNodesAreDistinctRoutes()
    {
        List<(IPNetwork, IPAddress)> routes =
        [
            (IPNetwork.Parse("10.102.0.0/16"), IPAddress.Parse("192.0.2.2")),
            (IPNetwork.Parse("fd00:102::/64"), IPAddress.Parse("192.0.2.2")),
            (IPNetwork.Parse("10.103.0.0/16"), IPAddress.Parse("192.0.2.3")),
            (IPNetwork.Parse("fd00:103::/64"), IPAddress.Parse("192.0.2.3")),
        ];
        _h.Datapath.Tunnels.Sync(routes, native: true);
        static List<string> Text(IEnumerable<(IPNetwork Prefix, IPAddress Node)> r) =>
            r.Select(x => $"{x.Prefix} {x.Node}").Order().ToList();
        Assert.Equal(Text(routes), Text(_h.Datapath.Tunnels.Routes()));
        Assert.Equal(routes.Select(r => r.Item1.ToString()).Order(),
            _h.Datapath.Tunnels.NativePrefixes().Select(p => p.ToString()).Order());
        _h.Datapath.Tunnels.Sync(routes[..2]);
        Assert.Equal(Text(routes[..2]), Text(_h.Datapath.Tunnels.Routes()));
        Assert.Empty(_h.Datapath.Tunnels.NativePrefixes());
        _h.Datapath.Tunnels.Sync([]);
    }
}
