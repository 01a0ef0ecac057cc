using System.Net;
using Membrane.Policy.Identity;

namespace Membrane.Policy.Resolution;

/// <summary>The ipcache view: address prefixes to identities, and the identity of an address.</summary>
public sealed partial class PolicyEngine
{
    // ---- ipcache ----

    /// <summary>Address prefix → identity, as the datapath's ipcache holds it.</summary>
    public IEnumerable<(IPNetwork Prefix, uint Identity)> IpCache()
    {
        yield return (IPNetwork.Parse("0.0.0.0/0"), ReservedIdentities.WorldIPv4);
        yield return (IPNetwork.Parse("::/0"), ReservedIdentities.WorldIPv6);
        foreach (var identity in _cidrIdentities.Values)
        {
            yield return (identity.Prefix!.Value, identity.Id);
        }
        foreach (var endpoint in _endpoints.Values)
        {
            foreach (var address in endpoint.Addresses)
            {
                yield return (new IPNetwork(address, address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128), endpoint.Identity.Id);
            }
        }
    }

    /// <summary>
    /// The identity the datapath derives for an address: a pod address (always the longest prefix, and written
    /// last into the ipcache, so it wins over an equal CIDR prefix), else the longest CIDR prefix, else world.
    /// </summary>
    public uint IdentityOf(IPAddress address)
    {
        if (_identityByAddress.TryGetValue(address, out var pod))
        {
            return pod;
        }
        var best = (Length: -1, Identity: address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? ReservedIdentities.WorldIPv4 : ReservedIdentities.WorldIPv6);
        foreach (var identity in _cidrIdentities.Values)
        {
            var prefix = identity.Prefix!.Value;
            if (prefix.BaseAddress.AddressFamily == address.AddressFamily && prefix.PrefixLength > best.Length && prefix.Contains(address))
            {
                best = (prefix.PrefixLength, identity.Id);
            }
        }
        return best.Identity;
    }
}
