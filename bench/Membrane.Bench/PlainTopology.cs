using System.Net;
using Membrane.Agent.Sandbox;

namespace Membrane.Bench;

/// <summary>
/// The local cluster's shape with no filtering at all: a client and a web pod behind node 1, a web pod behind node 2,
/// each node a namespace that forwards (the kernel's own routing, no eBPF, no nftables), the nodes joined by a bridge in
/// an underlay namespace (its bridge netfilter off, as the agent leaves it); in tunnel mode the nodes route each other's
/// pods into a VXLAN device of their own (UDP 8472, to the other node's underlay address, pods' MTU 1450, as in the local
/// cluster). What the topology itself gives cross-node against same-node, measured in the same rounds as Membrane's
/// cluster.
/// </summary>
public sealed class PlainTopology : IDisposable
{
    private const string Prefix = "mbbw";
    private static readonly string[] Names = ["client", "same", "cross", "n1", "n2", "ul"];

    public string ClientNetns => Netns("client");

    public IPAddress SameNodeWeb { get; } = IPAddress.Parse("10.231.0.3");

    public IPAddress CrossNodeWeb { get; } = IPAddress.Parse("10.232.0.2");

    private readonly bool _tunnel;

    private PlainTopology(bool tunnel) => _tunnel = tunnel;

    private static string Netns(string name) => $"{Prefix}-{name}";

    public static PlainTopology Create(bool tunnel)
    {
        var topology = new PlainTopology(tunnel);
        try
        {
            topology.Build();
            return topology;
        }
        catch
        {
            topology.Dispose();
            throw;
        }
    }

    private void Build()
    {
        Dispose();
        foreach (var name in Names)
        {
            Ip.Run("netns", "add", Netns(name));
            Ip.Run("-n", Netns(name), "link", "set", "lo", "up");
        }
        var mtu = _tunnel ? 1450 : 1500;
        Pod("client", "n1", "10.231.0.2", "10.231.0.1", mtu);
        Pod("same", "n1", "10.231.0.3", "10.231.0.1", mtu);
        Pod("cross", "n2", "10.232.0.2", "10.232.0.1", mtu);
        var underlay = Netns("ul");
        Ip.Run("-n", underlay, "link", "add", "br0", "type", "bridge");
        Ip.Run("-n", underlay, "link", "set", "br0", "up");
        NetworkNamespace.Run(underlay, UnderlayNetwork.SwitchOffBridgeNetfilter);
        foreach (var (node, address, peer, pods) in new[] { ("n1", "10.230.0.1", "10.230.0.2", "10.232.0.0/24"),
            ("n2", "10.230.0.2", "10.230.0.1", "10.231.0.0/24") })
        {
            Ip.Run("-n", Netns(node), "link", "add", "ul", "type", "veth", "peer", "name", $"p-{node}", "netns", underlay);
            Ip.Run("-n", underlay, "link", "set", $"p-{node}", "master", "br0", "up");
            Ip.Batch(Netns(node), [$"addr add {address}/24 dev ul", "link set ul up"]);
            Ip.Exec("ip", ["netns", "exec", Netns(node), "sysctl", "-qw", "net.ipv4.ip_forward=1", "net.ipv4.conf.all.proxy_arp=1"], null);
            if (_tunnel)
            {
                // The other node answers ARP for its pods through the tunnel (proxy ARP, as on its pods' veths).
                Ip.Run("-n", Netns(node), "link", "add", "vx", "type", "vxlan", "id", "1", "local", address, "remote", peer, "dstport",
                    "8472", "dev", "ul");
                Ip.Batch(Netns(node), ["link set vx up", $"route add {pods} dev vx"]);
            }
            else
            {
                Ip.Run("-n", Netns(node), "route", "add", pods, "via", peer, "dev", "ul");
            }
        }
    }

    /// <summary>A pod behind a node: its address alone on eth0, the gateway reached by the node's proxy ARP.</summary>
    private static void Pod(string pod, string node, string address, string gateway, int mtu)
    {
        Ip.Run("-n", Netns(node), "link", "add", $"h-{pod}", "type", "veth", "peer", "name", "eth0", "netns", Netns(pod));
        Ip.Batch(Netns(pod), [$"addr add {address}/32 dev eth0", $"link set eth0 mtu {mtu} up", $"route add {gateway} dev eth0",
            $"route add default via {gateway}"]);
        Ip.Batch(Netns(node), [$"addr replace {gateway}/32 dev lo", $"link set h-{pod} up", $"route add {address}/32 dev h-{pod}"]);
        Ip.Exec("ip", ["netns", "exec", Netns(node), "sysctl", "-qw", $"net.ipv4.conf.h-{pod}.proxy_arp=1"], null);
    }

    /// <summary>The namespace a web pod's iperf3 server runs in.</summary>
    public string WebNetns(IPAddress web) => Netns(web.Equals(SameNodeWeb) ? "same" : "cross");

    public void Dispose()
    {
        foreach (var name in Names.Where(n => NetworkNamespace.Exists(Netns(n))))
        {
            Ip.Run("netns", "delete", Netns(name));
        }
    }
}
