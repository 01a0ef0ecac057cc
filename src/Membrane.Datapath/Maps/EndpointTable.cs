using System.Net;
using System.Net.Sockets;
using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Maps;

/// <summary>
/// Each endpoint's own addresses, by the ifindex of its host-side veth (map <c>mb_endpoints</c>): the only
/// sources the pod may send from. An interface without an entry may send nothing, so an entry is written before
/// programs are attached and removed with the endpoint; so are the endpoint's conntrack tables.
/// </summary>
public sealed unsafe class EndpointTable(BpfMap map, ConntrackTable conntrack)
{
    public void Set(uint ifIndex, IEnumerable<IPAddress> addresses, bool audit = false)
    {
        ArgumentNullException.ThrowIfNull(addresses);
        var value = new EndpointValue { Flags = audit ? EndpointValue.Audit : 0 };
        foreach (var address in addresses)
        {
            var bytes = address.GetAddressBytes();
            if (address.AddressFamily == AddressFamily.InterNetwork)
            {
                value.IPv4 = BitConverter.ToUInt32(bytes);
                value.Flags |= EndpointValue.HasIPv4;
            }
            else
            {
                for (var i = 0; i < 16; i++)
                {
                    value.IPv6[i] = bytes[i];
                }
                value.Flags |= EndpointValue.HasIPv6;
            }
        }
        conntrack.AddEndpoint(ifIndex);
        map.Update(new EndpointKey { IfIndex = ifIndex }, value);
    }

    /// <summary>Whether the endpoint's entry has policy audit mode on.</summary>
    public bool IsAudited(uint ifIndex) =>
        map.TryLookup<EndpointKey, EndpointValue>(new EndpointKey { IfIndex = ifIndex }, out var value)
        && (value.Flags & EndpointValue.Audit) != 0;

    public bool Remove(uint ifIndex)
    {
        var removed = map.Delete(new EndpointKey { IfIndex = ifIndex });
        conntrack.RemoveEndpoint(ifIndex);
        return removed;
    }

    /// <summary>The interfaces that have an entry.</summary>
    public IReadOnlyList<uint> IfIndexes() => map.Keys<EndpointKey>().Select(k => k.IfIndex).ToList();
}
