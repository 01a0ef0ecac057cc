using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;

namespace Membrane.Agent.Endpoints;

/// <summary>
/// Destinations a pod reaches only the node at, whatever the node's own addresses are: link-local IPv6 (the gateway
/// fe80::1 and every host end's own link-local address; never forwarded), multicast and limited broadcast (received
/// on the pod's link, which only the node shares), loopback. The ipcache gives them the host identity, so a policy
/// that allows the world does not allow the node through them.
/// </summary>
public static class NodeScope
{
    public static IReadOnlyList<IPNetwork> Prefixes { get; } =
    [
        IPNetwork.Parse("fe80::/10"), IPNetwork.Parse("ff00::/8"), IPNetwork.Parse("::1/128"),
        IPNetwork.Parse("224.0.0.0/4"), IPNetwork.Parse("255.255.255.255/32"), IPNetwork.Parse("127.0.0.0/8"),
    ];

    /// <summary>The prefix of one address alone (/32 or /128).</summary>
    public static IPNetwork HostRoute(IPAddress address) => address is null ? throw new ArgumentNullException(nameof(address))
        : new(address, address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128);

    /// <summary>
    /// Every address of this network namespace's interfaces, and each IPv4 subnet's directed broadcast (a socket bound
    /// to the wildcard address receives it): what the node answers on when the agent runs in the node's namespace.
    /// </summary>
    public static IEnumerable<IPNetwork> OfThisNamespace()
    {
        foreach (var nic in NetworkInterface.GetAllNetworkInterfaces())
        {
            foreach (var unicast in nic.GetIPProperties().UnicastAddresses)
            {
                var address = unicast.Address;
                if (address.IsIPv6LinkLocal || address.AddressFamily is not (AddressFamily.InterNetwork or AddressFamily.InterNetworkV6))
                {
                    continue; // link-local: the whole of fe80::/10 is the node's already (Prefixes)
                }
                yield return HostRoute(new IPAddress(address.GetAddressBytes())); // without a scope id
                if (address.AddressFamily == AddressFamily.InterNetwork && unicast.PrefixLength is > 0 and < 31)
                {
                    var bits = BitConverter.ToUInt32(address.GetAddressBytes().Reverse().ToArray());
                    var broadcast = bits | (uint.MaxValue >> unicast.PrefixLength);
                    yield return HostRoute(new IPAddress(BitConverter.GetBytes(broadcast).Reverse().ToArray()));
                }
            }
        }
    }
}
