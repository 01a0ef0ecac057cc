using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Kvstore;

namespace Membrane.Agent.Sandbox;

/// <summary>
/// The local cluster's underlay: one namespace with a bridge that joins every node namespace (a veth per node),
/// standing in for the network between machines. Each node gets its underlay address (IPv4 as given, IPv6 derived
/// from it) and, in tunnel mode, a VXLAN device in collect-metadata mode with the tunnel programs; routes to the other
/// nodes' pod prefixes are Membrane's own (protocol 250), so only they are ever replaced or removed.
/// </summary>
public sealed class UnderlayNetwork(AgentOptions options)
{
    public const string NodeDevice = "mbul";
    public const string TunnelDevice = "mbvx";
    public const string Bridge = "mbul0";
    public const int TunnelPort = (int)WireTunnel.UdpPort;
    public const string RouteProtocol = "250";

    /// <summary>
    /// A node's tunnel device address: 02:6d and its underlay IPv4 address. With ARP off the kernel addresses inner
    /// frames to the sending device itself; to_tunnel rewrites that to the receiver's address, derived the same way.
    /// </summary>
    public static string TunnelMac(IPAddress node) => string.Join(':', TunnelMacBytes(node).Select(b => b.ToString("x2",
        System.Globalization.CultureInfo.InvariantCulture)));

    /// <summary>The same address as bytes, as the datapath's configuration holds it.</summary>
    public static byte[] TunnelMacBytes(IPAddress node)
    {
        ArgumentNullException.ThrowIfNull(node);
        return [0x02, 0x6d, .. node.GetAddressBytes()];
    }

    private readonly string _node = options.NodeNamespace;

    /// <summary>This node's port on the bridge (in the underlay namespace; names are at most 15 bytes).</summary>
    private string Port => "ul-" + (options.NamePrefix.Length <= 12 ? options.NamePrefix : PodNetwork.Hash(options.NamePrefix));

    /// <summary>The IPv6 underlay address that goes with an IPv4 one (IPv6 routes need an IPv6 next hop).</summary>
    public static IPAddress IPv6Of(IPAddress ipv4)
    {
        ArgumentNullException.ThrowIfNull(ipv4);
        var bytes = new byte[16];
        bytes[0] = 0xfd;
        bytes[1] = 0xff;
        bytes[2] = 0x6d;
        bytes[3] = 0x62;
        ipv4.GetAddressBytes().CopyTo(bytes, 12);
        return new IPAddress(bytes);
    }

    /// <summary>Creates what is missing: the shared namespace and bridge, this node's port and address, the tunnel device.</summary>
    public void Ensure(PolicyDatapath datapath)
    {
        ArgumentNullException.ThrowIfNull(datapath);
        var address = options.UnderlayAddress ?? throw new InvalidOperationException("no underlay address");
        // Several agents may start at once: whoever loses a race to create finds it made.
        Idempotent(() => Ip.Run("netns", "add", options.UnderlayNamespace), () => NetworkNamespace.Exists(options.UnderlayNamespace));
        Idempotent(() => Ip.Run("-n", options.UnderlayNamespace, "link", "add", Bridge, "type", "bridge"),
            () => IfIndex(options.UnderlayNamespace, Bridge) is not null);
        Ip.Run("-n", options.UnderlayNamespace, "link", "set", Bridge, "up");
        NetworkNamespace.Run(options.UnderlayNamespace, SwitchOffBridgeNetfilter);
        if (IfIndex(_node, NodeDevice) is null)
        {
            if (IfIndex(options.UnderlayNamespace, Port) is not null)
            {
                Ip.Run("-n", options.UnderlayNamespace, "link", "delete", Port);
            }
            Ip.Run("-n", _node, "link", "add", NodeDevice, "type", "veth", "peer", "name", Port, "netns", options.UnderlayNamespace);
        }
        Ip.Run("-n", options.UnderlayNamespace, "link", "set", Port, "master", Bridge, "up");
        Ip.Batch(_node,
        [
            $"addr replace {address}/{options.UnderlayPrefixLength} dev {NodeDevice}",
            $"addr replace {IPv6Of(address)}/{96 + options.UnderlayPrefixLength} dev {NodeDevice} nodad",
            $"link set {NodeDevice} up",
        ]);
        // Other nodes' packets for this node's pods are delivered from here (host routing; in tunnel mode unwrapped here
        // first); detached otherwise.
        var device = IfIndex(_node, NodeDevice)!.Value;
        NetworkNamespace.Run(_node, () =>
        {
            if (options.HostRouting == HostRouting.Bpf)
            {
                datapath.Hooks.Attach(device, TcDirection.Ingress, datapath.FromUnderlay);
            }
            else
            {
                datapath.Hooks.Detach(device, TcDirection.Ingress);
            }
        });
        if (options.RoutingMode == RoutingMode.Tunnel)
        {
            if (IfIndex(_node, TunnelDevice) is null)
            {
                Ip.Run("-n", _node, "link", "add", TunnelDevice, "address", TunnelMac(address), "mtu", "1450", "type", "vxlan",
                    "external", "dstport", $"{TunnelPort}");
            }
            // No IPv6 address of its own: it would only send router solicitations and MLD into the tunnel.
            Ip.Run("-n", _node, "link", "set", TunnelDevice, "addrgenmode", "none", "arp", "off", "up");
            var tunnel = IfIndex(_node, TunnelDevice)!.Value;
            // Known before from_underlay meets the device's first packet: there it insists on tunnel metadata.
            datapath.SetTunnelDevice((uint)tunnel, TunnelMacBytes(address));
            NetworkNamespace.Run(_node, () =>
            {
                datapath.Hooks.Attach(tunnel, TcDirection.Egress, datapath.ToTunnel);
                datapath.Hooks.Attach(tunnel, TcDirection.Ingress, datapath.FromUnderlay);
            });
        }
    }

    /// <summary>The bridge-netfilter switches (those of the namespace of the thread that opens them).</summary>
    public static readonly string[] BridgeNetfilterSwitches = ["/proc/sys/net/bridge/bridge-nf-call-iptables",
        "/proc/sys/net/bridge/bridge-nf-call-ip6tables", "/proc/sys/net/bridge/bridge-nf-call-arptables"];

    /// <summary>
    /// A network's switch runs no host firewall: with br_netfilter loaded on the host (container runtimes load it), every
    /// frame the bridge forwards would also cross the underlay namespace's (empty) iptables hooks, a fake routing step
    /// and an skb extension: about 6 % of a cross-node round trip, measured. Its switches are per namespace; when the
    /// module is not loaded they do not exist and there is nothing to switch off. Call it in the namespace to switch.
    /// </summary>
    public static void SwitchOffBridgeNetfilter()
    {
        foreach (var path in BridgeNetfilterSwitches.Where(File.Exists))
        {
            File.WriteAllText(path, "0");
        }
    }

    /// <summary>
    /// Routes the other nodes' pod prefixes: via their underlay addresses (native) or into the tunnel device
    /// (tunnel). Routes of nodes that left are removed.
    /// </summary>
    public void Route(IEnumerable<ClusterNode> others)
    {
        ArgumentNullException.ThrowIfNull(others);
        var own = options.UnderlayAddress ?? throw new InvalidOperationException("no underlay address");
        var wanted = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var node in others.Where(n => n.Address.AddressFamily == AddressFamily.InterNetwork))
        {
            foreach (var range in node.PodRanges)
            {
                var v4 = range.BaseAddress.AddressFamily == AddressFamily.InterNetwork;
                // The source hint: errors this node sends towards those pods (a path-MTU error, as a router on their
                // path) come from its underlay address, never from an address every node has (the pods' gateway),
                // which the receiving node would discard as its own.
                var source = v4 ? own : IPv6Of(own);
                wanted[range.ToString()] = options.RoutingMode == RoutingMode.Tunnel
                    ? $"route replace {range} dev {TunnelDevice} src {source} proto {RouteProtocol}"
                    : $"route replace {range} via {(v4 ? node.Address : IPv6Of(node.Address))} dev {NodeDevice} src {source} " +
                      $"proto {RouteProtocol}";
            }
        }
        var commands = Installed().Where(dst => !wanted.ContainsKey(dst)).Select(dst => $"route del {dst} proto {RouteProtocol}")
            .Concat(wanted.Values).ToList();
        if (commands.Count > 0)
        {
            Ip.Batch(_node, commands);
        }
    }

    /// <summary>The prefixes Membrane routes to other nodes now.</summary>
    public IReadOnlyList<string> Installed()
    {
        var routes = new List<string>();
        foreach (var family in new[] { "-4", "-6" })
        {
            using var json = JsonDocument.Parse(Ip.Run("-n", _node, family, "-j", "route", "show", "proto", RouteProtocol));
            routes.AddRange(json.RootElement.EnumerateArray().Select(r => r.GetProperty("dst").GetString()!)
                .Select(dst => dst.Contains('/', StringComparison.Ordinal) ? dst : $"{dst}/{(family == "-4" ? 32 : 128)}"));
        }
        return routes;
    }

    /// <summary>
    /// Removes this node's port (its routes and tunnel device go with the node namespace); the underlay namespace goes
    /// with the last node.
    /// </summary>
    public static void Remove(string underlayNamespace, string namePrefix)
    {
        ArgumentNullException.ThrowIfNull(namePrefix);
        if (!NetworkNamespace.Exists(underlayNamespace))
        {
            return;
        }
        var port = "ul-" + (namePrefix.Length <= 12 ? namePrefix : PodNetwork.Hash(namePrefix));
        if (IfIndex(underlayNamespace, port) is null)
        {
            // This node has no port there (gone with its node namespace, or never joined): the namespace is not its to
            // remove, whatever else it holds (another cluster's underlay is never deleted by this node's cleanup).
            return;
        }
        try
        {
            Ip.Run("-n", underlayNamespace, "link", "delete", port);
        }
        catch (InvalidOperationException) when (IfIndex(underlayNamespace, port) is null)
        {
            // gone meanwhile (with its node namespace)
        }
        var bridged = IfIndex(underlayNamespace, Bridge) is not null;
        using var ports = JsonDocument.Parse(bridged ? Ip.Run("-n", underlayNamespace, "-j", "link", "show", "master", Bridge) : "[]");
        if (ports.RootElement.GetArrayLength() == 0)
        {
            Ip.Run("netns", "delete", underlayNamespace);
        }
    }

    private static int? IfIndex(string netns, string device)
    {
        try
        {
            using var doc = JsonDocument.Parse(Ip.Run("-n", netns, "-j", "link", "show", "dev", device));
            return doc.RootElement[0].GetProperty("ifindex").GetInt32();
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }

    private static void Idempotent(Action create, Func<bool> exists)
    {
        if (exists())
        {
            return;
        }
        try
        {
            create();
        }
        catch (InvalidOperationException) when (exists())
        {
        }
    }
}
