using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.RegularExpressions;
using Membrane.Agent.Sandbox;
using Membrane.Datapath.Tests;
using static Membrane.Agent.Tests.Cluster.LocalCluster;

namespace Membrane.Agent.Tests.Cluster;

/// <summary>
/// The seed's story across nodes, in both routing modes: client on node 1, web on node 2, joined by the underlay.
/// Real traffic (echo, TCP) in both families; an L4 policy drops ping, an icmps rule allows echo and nothing else, a
/// deny wins; replies and a path-MTU error from a router on the path pass by conntrack into a pod that allows no
/// ingress at all. Tunnel mode: the pods' MTU leaves room for VXLAN, and tunnel traffic from an address that is no
/// node is dropped.
/// </summary>
[Collection(ClusterGroup.Name)]
public sealed class CrossNodeTests : IDisposable
{
    private readonly LocalCluster _cluster = new();
    private readonly List<string> _files = [];
    private string? _stranger;

    private static readonly string Workloads = Shop("node-1", "node-2") + """
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: client-closed, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: client}}
          ingress: [{fromEndpoints: [{matchLabels: {app: nobody}}]}]
        """;

    private const string L4Only = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-l4, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
        """;

    private const string EchoOnly = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-echo, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            icmps: [{fields: [{type: EchoRequest, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
        """;

    private const string DenyEcho = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-deny, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 8}]}]}]
        """;

    private string File(string yaml)
    {
        var file = Write(yaml);
        _files.Add(file);
        return file;
    }

    private static string[] Probe(string protocol, params string[] more) =>
        ["connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol", protocol, .. more];

    private static string[] Ping(string family) =>
        Probe(family == "ipv6" ? "icmpv6" : "icmp", "--icmp-type", "EchoRequest", "--family", family);

    private static (string Netns, string Interface, string IPv4, string IPv6) Pod(int node, string pod)
    {
        using var json = Json(node, "endpoint", "get", pod);
        var e = json.RootElement;
        return (e.GetProperty("netns").GetString()!, e.GetProperty("interface").GetString()!, e.GetProperty("iPv4").GetString()!,
            e.GetProperty("iPv6").GetString()!);
    }

    private const string TunnelDrops = "Tunnel traffic from an address that is no node, or to a prefix no node hosts";

    private static ulong Drops(int node, string reason)
    {
        using var json = Json(node, "status");
        return json.RootElement.GetProperty("drops").GetProperty(reason).GetUInt64();
    }

    [Theory]
    [InlineData("native")]
    [InlineData("tunnel")]
    public void TheSeedStoryAcrossTwoNodes(string routing)
    {
        _cluster.Start(1, routing);
        _cluster.Start(2, routing);
        Assert.Equal(0, LocalCluster.OnNode(1, "apply", "-f", File(Workloads)).Code);
        Assert.True(Eventually(2, 0, "endpoint", "get", "shop/web"), "node 2 never ran shop/web");

        // No policy on web: echo across nodes in both families, the replies pass client's closed ingress by conntrack.
        Assert.True(Eventually(1, 0, Ping("ipv4")), "no IPv4 echo between the nodes");
        Assert.Equal(0, LocalCluster.OnNode(1, Ping("ipv6")).Code);
        Assert.Equal(0, LocalCluster.OnNode(1, Probe("tcp", "--port", "80")).Code);

        // An L4 rule selects web: ping is dropped (on node 2, by web's ingress policy), TCP 80 still passes.
        var policyDrops = Drops(2, "Policy denied");
        Assert.Equal(0, LocalCluster.OnNode(1, "policy", "import", File(L4Only)).Code);
        Assert.True(Eventually(1, 1, Ping("ipv4")), "node 2 never enforced the L4 policy imported on node 1");
        Assert.Equal(1, LocalCluster.OnNode(1, Ping("ipv6")).Code);
        Assert.Equal(0, LocalCluster.OnNode(1, Probe("tcp", "--port", "80")).Code);
        Assert.True(Drops(2, "Policy denied") > policyDrops);
        // Trace on either node agrees with the kernel: web's policy is resolved from the same objects everywhere.
        foreach (var node in new[] { 1, 2 })
        {
            Assert.Equal(1, LocalCluster.OnNode(node, "policy", "trace", "--from", "shop/client", "--to", "shop/web", "--protocol", "icmp",
                "--icmp-type", "EchoRequest").Code);
            Assert.Equal(0, LocalCluster.OnNode(node, "policy", "trace", "--from", "shop/client", "--to", "shop/web", "--protocol", "tcp",
                "--port", "80").Code);
        }

        // icmps: echo from client allowed in both families, TCP 81 still not.
        Assert.Equal(0, LocalCluster.OnNode(2, "policy", "import", File(EchoOnly)).Code);
        Assert.True(Eventually(1, 0, Ping("ipv4")), "the icmps rule never allowed echo across nodes");
        Assert.Equal(0, LocalCluster.OnNode(1, Ping("ipv6")).Code);
        Assert.Equal(1, LocalCluster.OnNode(1, Probe("tcp", "--port", "81")).Code);

        // A deny rule wins over the allow: IPv4 echo dropped, IPv6 echo (not denied) and TCP 80 allowed.
        Assert.Equal(0, LocalCluster.OnNode(1, "policy", "import", File(DenyEcho)).Code);
        Assert.True(Eventually(1, 1, Ping("ipv4")), "the deny rule never won");
        Assert.Equal(0, LocalCluster.OnNode(1, Ping("ipv6")).Code);
        Assert.Equal(0, LocalCluster.OnNode(1, Probe("tcp", "--port", "80")).Code);
        Assert.Equal(0, LocalCluster.OnNode(1, "policy", "delete", "shop/web-deny").Code);
        Assert.True(Eventually(1, 0, Ping("ipv4")));

        var client = Pod(1, "shop/client");
        var web = Pod(2, "shop/web");
        if (routing == "tunnel")
        {
            Assert.Contains("mtu 1450", Run("ip", "-n", client.Netns, "link", "show", "eth0"), StringComparison.Ordinal);
            StrangerTunnelTrafficIsDropped(client);
        }
        PathMtuErrorsFromARouterOnThePathReachTheClient(client, web);

        using var status = Json(1, "status");
        var cluster = status.RootElement.GetProperty("cluster");
        Assert.Equal("ok", cluster.GetProperty("health").GetString());
        Assert.Equal(2, cluster.GetProperty("nodes").GetArrayLength());
        Assert.Equal(routing, cluster.GetProperty("routingMode").GetString());
    }

    /// <summary>
    /// Host routing across nodes: client's packets leave node 1 straight from client's hook (native: by node 1's route
    /// to node 2; tunnel: into node 1's VXLAN device), and node 2 delivers them from its underlay hook (the underlay
    /// device, or the VXLAN device) after web's ingress verdict, so neither node's forwarding sees them (an nftables
    /// counter on each node's forward hook stays at 0; on the legacy path it counts every echo and reply). Web's deny
    /// is still judged (on node 2's underlay hook) and the replies pass client's closed ingress by conntrack there.
    /// </summary>
    [Theory]
    [InlineData("native", "bpf")]
    [InlineData("native", "legacy")]
    [InlineData("tunnel", "bpf")]
    [InlineData("tunnel", "legacy")]
    public void HostRoutingSkipsBothNodesForwarding(string routing, string hostRouting)
    {
        _cluster.Start(1, routing, "--host-routing", hostRouting);
        _cluster.Start(2, routing, "--host-routing", hostRouting);
        Assert.Equal(0, LocalCluster.OnNode(1, "apply", "-f", File(Workloads)).Code);
        Assert.True(Eventually(2, 0, "endpoint", "get", "shop/web"), "node 2 never ran shop/web");
        Assert.True(Eventually(1, 0, Ping("ipv4")), "no IPv4 echo between the nodes");
        var (client, web) = (Pod(1, "shop/client"), Pod(2, "shop/web"));
        // One echo per family first: a packet whose next hop has no resolved neighbour entry yet takes the stack,
        // which resolves it.
        Assert.Equal(0, LocalCluster.OnNode(1, Ping("ipv6")).Code);
        foreach (var node in new[] { 1, 2 })
        {
            Ip.Exec("ip", ["netns", "exec", $"{Prefix(node)}-node", "nft", "-f", "-"], $$"""
                table inet mbtest_fwd {
                  chain forward {
                    type filter hook forward priority 0; policy accept;
                    ip saddr { {{client.IPv4}}, {{web.IPv4}} } counter
                    ip6 saddr { {{client.IPv6}}, {{web.IPv6}} } counter
                  }
                }
                """);
        }

        var tunnelled = routing == "tunnel" ? TunnelDevicePackets() : 0;
        foreach (var (address, flag) in new[] { (web.IPv4, "-4"), (web.IPv6, "-6") })
        {
            Run("ip", "netns", "exec", client.Netns, "ping", flag, "-c", "20", "-i", "0.01", "-W", "1", "-q", address);
        }
        if (routing == "tunnel")
        {
            // With host routing the programs wrap and unwrap the echoes themselves: neither node's VXLAN device carries
            // them (the 40 echoes and 40 replies each way would show in its counters); on the legacy path both do.
            var carried = TunnelDevicePackets() - tunnelled;
            Assert.True(hostRouting == "bpf" ? carried < 10 : carried >= 160, $"the nodes' VXLAN devices carried {carried} packets");
        }
        var forwarded = new[] { 1, 2 }.Select(node => Regex.Matches(Run("ip", "netns", "exec", $"{Prefix(node)}-node", "nft", "list",
            "chain", "inet", "mbtest_fwd", "forward"), @"counter packets (\d+)").Sum(m => long.Parse(m.Groups[1].Value,
            CultureInfo.InvariantCulture))).ToArray();
        if (hostRouting == "bpf")
        {
            Assert.Equal([0L, 0L], forwarded);
        }
        else
        {
            // 20 echoes and 20 replies per family through each node.
            Assert.All(forwarded, n => Assert.True(n >= 80, $"the nodes' forwarding counted {string.Join(", ", forwarded)}"));
        }
        // The underlay stands in for a switch: no host firewall on the frames it forwards, br_netfilter loaded or not.
        foreach (var path in UnderlayNetwork.BridgeNetfilterSwitches)
        {
            var value = NetworkNamespace.Run(Underlay, () => System.IO.File.Exists(path) ? System.IO.File.ReadAllText(path).Trim() : "0");
            Assert.True(value == "0", $"{path} in the underlay namespace is {value}");
        }

        var trace = LocalCluster.OnNode(2, "policy", "trace", "--from", "shop/client", "--to", "shop/web", "--protocol", "tcp",
            "--port", "80").Out;
        var underlay = routing == "native" ? $"{UnderlayNetwork.NodeDevice})" : $"{UnderlayNetwork.NodeDevice}, which unwraps";
        Assert.Contains(hostRouting == "bpf" ? $"shop/web's ingress at this node's underlay hook (from_underlay on {underlay}"
            : "shop/web's ingress at to_pod on", trace, StringComparison.Ordinal);

        // Web's policy, judged on node 2 (its underlay hook with host routing): echo allowed, IPv4 echo denied.
        Assert.Equal(0, LocalCluster.OnNode(1, "policy", "import", File(EchoOnly)).Code);
        Assert.Equal(0, LocalCluster.OnNode(1, "policy", "import", File(DenyEcho)).Code);
        Assert.True(Eventually(1, 1, Ping("ipv4")), "the deny rule never won");
        Assert.Equal(0, LocalCluster.OnNode(1, Ping("ipv6")).Code);
        Assert.Equal(1, LocalCluster.OnNode(1, Probe("tcp", "--port", "80")).Code);
    }

    /// <summary>What both nodes' VXLAN devices sent and received, in packets.</summary>
    private static long TunnelDevicePackets() => new[] { 1, 2 }.Sum(node =>
    {
        using var json = JsonDocument.Parse(Run("ip", "-n", $"{Prefix(node)}-node", "-s", "-j", "link", "show",
            UnderlayNetwork.TunnelDevice));
        var stats = json.RootElement[0].GetProperty("stats64");
        return stats.GetProperty("rx").GetProperty("packets").GetInt64() + stats.GetProperty("tx").GetProperty("packets").GetInt64();
    });

    /// <summary>
    /// Node 2's veth to web has a smaller MTU: node 2 (a router on the path) answers client's full-size echo with
    /// fragmentation needed / packet too big. Client allows no ingress, so only conntrack's related errors let it in;
    /// the client's kernel then knows the path MTU.
    /// </summary>
    private static void PathMtuErrorsFromARouterOnThePathReachTheClient((string Netns, string Interface, string IPv4, string IPv6) client,
        (string Netns, string Interface, string IPv4, string IPv6) web)
    {
        Run("ip", "-n", $"{Prefix(2)}-node", "link", "set", web.Interface, "mtu", "1300");
        foreach (var (address, flag) in new[] { (web.IPv4, "-4"), (web.IPv6, "-6") })
        {
            Assert.True(Eventually(() =>
            {
                try
                {
                    Run("ip", "netns", "exec", client.Netns, "ping", flag, "-M", "do", "-s", "1380", "-c", "1", "-W", "1", address);
                }
                catch (InvalidOperationException)
                {
                    // expected: the first full-size echo is answered by the router's error
                }
                return Run("ip", "-n", client.Netns, "route", "get", address).Contains("mtu 1300", StringComparison.Ordinal);
            }, seconds: 10), $"the path MTU error for {address} never reached the client");
        }
    }

    /// <summary>
    /// A host on the underlay that is no node sends VXLAN to node 2 claiming client's identity: dropped on the tunnel
    /// device, counted, and web's ingress never sees it.
    /// </summary>
    private void StrangerTunnelTrafficIsDropped((string Netns, string Interface, string IPv4, string IPv6) client)
    {
        _stranger = "mbclu-x";
        if (NetworkNamespace.Exists(_stranger))
        {
            Ip.Run("netns", "delete", _stranger);
        }
        Ip.Run("netns", "add", _stranger);
        Ip.Run("-n", _stranger, "link", "add", "e0", "type", "veth", "peer", "name", "ul-x", "netns", Underlay);
        Ip.Run("-n", Underlay, "link", "set", "ul-x", "master", "mbul0", "up");
        Ip.Batch(_stranger, ["link set e0 up", "addr add 10.250.0.99/24 dev e0"]);
        using var json = Json(1, "endpoint", "get", "shop/client");
        var identity = json.RootElement.GetProperty("identity").GetUInt32();
        var before = Drops(2, TunnelDrops);
        using var socket = NetworkNamespace.Run(_stranger, () => new Socket(AddressFamily.InterNetwork, SocketType.Dgram,
            ProtocolType.Udp));
        for (var i = 0; i < 3; i++)
        {
            socket.SendTo(Vxlan(identity, IPAddress.Parse(client.IPv4), IPAddress.Parse(Pod(2, "shop/web").IPv4)),
                new IPEndPoint(IPAddress.Parse("10.250.0.2"), UnderlayNetwork.TunnelPort));
        }
        Assert.True(Eventually(() => Drops(2, TunnelDrops) >= before + 3, seconds: 10),
            "node 2 did not drop the stranger's tunnel traffic");
    }

    /// <summary>A VXLAN datagram: the header with <paramref name="vni"/>, an Ethernet frame to the tunnel device, an IPv4 echo.</summary>
    private static byte[] Vxlan(uint vni, IPAddress source, IPAddress destination)
    {
        byte[] icmp = [8, 0, 0, 0, 0x12, 0x34, 0, 1];
        var sum = InternetChecksum.Of(icmp);
        icmp[2] = (byte)(sum >> 8);
        icmp[3] = (byte)sum;
        var ip = new byte[20 + icmp.Length];
        ip[0] = 0x45;
        ip[3] = (byte)ip.Length;
        ip[8] = 64;
        ip[9] = 1;
        source.GetAddressBytes().CopyTo(ip, 12);
        destination.GetAddressBytes().CopyTo(ip, 16);
        var ipSum = InternetChecksum.Of(ip.AsSpan(0, 20));
        ip[10] = (byte)(ipSum >> 8);
        ip[11] = (byte)ipSum;
        icmp.CopyTo(ip, 20);
        var mac = UnderlayNetwork.TunnelMac(IPAddress.Parse("10.250.0.2")).Split(':').Select(b => Convert.ToByte(b, 16)).ToArray();
        byte[] header = [0x08, 0, 0, 0, (byte)(vni >> 16), (byte)(vni >> 8), (byte)vni, 0];
        return [.. header, .. mac, 0x02, 0, 0, 0, 0, 0x99, 0x08, 0x00, .. ip];
    }


    public void Dispose()
    {
        foreach (var file in _files)
        {
            System.IO.File.Delete(file);
        }
        if (_stranger is not null && NetworkNamespace.Exists(_stranger))
        {
            Ip.Run("netns", "delete", _stranger);
        }
        _cluster.Dispose();
    }
}
