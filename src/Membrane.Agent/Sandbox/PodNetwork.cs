using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using Membrane.Agent.State;

namespace Membrane.Agent.Sandbox;

/// <summary>Creates and removes a pod's network: its namespace, a veth pair into the node, addresses and routes.</summary>
public sealed class PodNetwork(AgentOptions options, NodeNetwork node)
{
    public static string Hash(string podKey) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(podKey)))[..8];

    public EndpointRecord Create(string podKey, IReadOnlyList<IPAddress> addresses, int mtu = 1500)
    {
        var hash = Hash(podKey);
        var netns = $"{options.NamePrefix}-{hash}";
        var host = $"mbh{hash}";
        var v4 = addresses.First(a => a.AddressFamily == AddressFamily.InterNetwork);
        var v6 = addresses.First(a => a.AddressFamily == AddressFamily.InterNetworkV6);
        Remove(netns, host);
        Ip.Run("netns", "add", netns);
        try
        {
            Ip.Run("-n", node.Name, "link", "add", host, "mtu", $"{mtu}", "type", "veth", "peer", "name", "eth0", "netns", netns, "mtu",
                $"{mtu}");
            Ip.Batch(netns,
            [
                "link set lo up",
                "link set eth0 up",
                $"addr add {v4}/32 dev eth0",
                $"addr add {v6}/128 dev eth0 nodad",
                $"route add {AgentOptions.GatewayIPv4} dev eth0 scope link",
                $"route add default via {AgentOptions.GatewayIPv4} dev eth0",
                $"route add default via {AgentOptions.GatewayIPv6} dev eth0",
            ]);
            Ip.Batch(node.Name,
            [
                $"link set {host} up",
                $"addr add {AgentOptions.GatewayIPv6}/64 dev {host} nodad",
                $"route add {v4}/32 dev {host}",
                $"route add {v6}/128 dev {host}",
            ]);
            var ifIndex = node.IfIndex(host) ?? throw new InvalidOperationException($"veth {host} vanished");
            return new EndpointRecord(podKey, netns, host, ifIndex, [.. addresses.Select(a => a.ToString())]);
        }
        catch
        {
            Remove(netns, host);
            throw;
        }
    }

    /// <summary>True when the namespace and the veth of a recorded endpoint still exist with the same index.</summary>
    public bool IsIntact(EndpointRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        return NetworkNamespace.Exists(record.Netns) && node.IfIndex(record.HostInterface) == record.IfIndex;
    }

    public void Delete(EndpointRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        Remove(record.Netns, record.HostInterface);
    }

    /// <summary>
    /// Removes pod namespaces of this sandbox that belong to none of <paramref name="podKeys"/>: left by an agent
    /// killed between forgetting a pod and removing its network.
    /// </summary>
    public void RemoveOrphans(IEnumerable<string> podKeys)
    {
        var expected = podKeys.Select(k => $"{options.NamePrefix}-{Hash(k)}").Append(node.Name).ToHashSet(StringComparer.Ordinal);
        var directory = Path.GetDirectoryName(NetworkNamespace.PathOf("x"))!;
        if (!Directory.Exists(directory))
        {
            return;
        }
        foreach (var netns in Directory.EnumerateFiles(directory).Select(Path.GetFileName).OfType<string>())
        {
            if (netns.StartsWith(options.NamePrefix + "-", StringComparison.Ordinal) && netns.Length == options.NamePrefix.Length + 9
                && !expected.Contains(netns))
            {
                Remove(netns, $"mbh{netns[^8..]}");
            }
        }
    }

    private void Remove(string netns, string host)
    {
        if (node.IfIndex(host) is not null)
        {
            Ip.Run("-n", node.Name, "link", "delete", host);
        }
        if (NetworkNamespace.Exists(netns))
        {
            Ip.Run("netns", "delete", netns);
        }
    }
}
