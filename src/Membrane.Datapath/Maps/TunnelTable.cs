using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Maps;

/// <summary>struct tunnel_value: the underlay address of the node that hosts a remote pod prefix.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct TunnelValue
{
    /// <summary>ROUTE_NATIVE: the node's own routes reach the prefix (from_pod may send there itself).</summary>
    public const uint Native = 1;

    public uint Node; // network byte order
    public uint Flags;
}

/// <summary>struct node_key: a node's underlay address.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct NodeKey
{
    public uint Address; // network byte order
}

/// <summary>struct node_value.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct NodeValue
{
    public uint Flags;
}

/// <summary>
/// Remote pod prefix → its node (where to_tunnel sends in tunnel mode, and from_pod into the tunnel device with host
/// routing; in native mode, flagged <see cref="TunnelValue.Native"/>, the prefixes from_pod may send to the node's route
/// itself) and the known nodes (the only senders whose tunnel identity from_underlay believes on the tunnel device).
/// Written whole from the cluster's node list.
/// </summary>
public sealed class TunnelTable(BpfMap<IpCache4Key, TunnelValue> routes4, BpfMap<IpCache6Key, TunnelValue> routes6,
    BpfMap<NodeKey, NodeValue> nodes)
{
    /// <summary>Makes the maps hold exactly these nodes and prefixes (additions first, so no known node is ever missing).</summary>
    public void Sync(IReadOnlyCollection<(IPNetwork Prefix, IPAddress Node)> routes, bool native = false)
    {
        var flags = native ? TunnelValue.Native : 0;
        ArgumentNullException.ThrowIfNull(routes);
        var wantedNodes = routes.Select(r => Key(r.Node)).ToHashSet();
        foreach (var node in wantedNodes)
        {
            nodes.Update(node, default);
        }
        var wanted4 = routes.Where(r => r.Prefix.BaseAddress.AddressFamily == AddressFamily.InterNetwork)
            .ToDictionary(r => IpCache4Key.From(r.Prefix), r => new TunnelValue { Node = Key(r.Node).Address, Flags = flags });
        var wanted6 = routes.Where(r => r.Prefix.BaseAddress.AddressFamily == AddressFamily.InterNetworkV6)
            .ToDictionary(r => IpCache6Key.From(r.Prefix), r => new TunnelValue { Node = Key(r.Node).Address, Flags = flags });
        Replace(routes4, wanted4);
        Replace(routes6, wanted6);
        foreach (var node in nodes.Keys<NodeKey>().Where(k => !wantedNodes.Contains(k)).ToList())
        {
            nodes.Delete(node);
        }
    }

    /// <summary>The nodes whose tunnel traffic is accepted.</summary>
    public IReadOnlyList<IPAddress> Nodes() => [.. nodes.Keys<NodeKey>().Select(k => new IPAddress(k.Address))];

    /// <summary>Remote prefix → node, as the maps hold them.</summary>
    public IReadOnlyList<(IPNetwork Prefix, IPAddress Node)> Routes() =>
    [
        .. routes4.Entries<IpCache4Key, TunnelValue>().Select(e => (e.Key.ToNetwork(), new IPAddress(e.Value.Node))),
        .. routes6.Entries<IpCache6Key, TunnelValue>().Select(e => (e.Key.ToNetwork(), new IPAddress(e.Value.Node))),
    ];

    /// <summary>The prefixes flagged for native routing (from_pod may send there by the node's route).</summary>
    public IReadOnlyList<IPNetwork> NativePrefixes() =>
    [
        .. routes4.Entries<IpCache4Key, TunnelValue>().Where(e => (e.Value.Flags & TunnelValue.Native) != 0).Select(e => e.Key.ToNetwork()),
        .. routes6.Entries<IpCache6Key, TunnelValue>().Where(e => (e.Value.Flags & TunnelValue.Native) != 0).Select(e => e.Key.ToNetwork()),
    ];

    private static NodeKey Key(IPAddress node)
    {
        if (node.AddressFamily != AddressFamily.InterNetwork)
        {
            throw new ArgumentException($"node address {node} is not IPv4: the tunnel's underlay is IPv4", nameof(node));
        }
        return new NodeKey { Address = BitConverter.ToUInt32(node.GetAddressBytes()) };
    }

    private static void Replace<TKey>(BpfMap<TKey, TunnelValue> map, Dictionary<TKey, TunnelValue> wanted)
        where TKey : unmanaged
    {
        foreach (var (key, value) in wanted)
        {
            map.Update(key, value);
        }
        foreach (var key in map.Keys<TKey>().Where(k => !wanted.ContainsKey(k)).ToList())
        {
            map.Delete(key);
        }
    }
}
