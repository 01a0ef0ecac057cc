using System.Net;
using System.Net.NetworkInformation;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Maps;

/// <summary>struct local_value: where host routing delivers a packet for a pod of this node, and the frame's addresses.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct LocalDeliveryValue
{
    public uint IfIndex;
    public fixed byte Mac[6];
    public fixed byte NodeMac[6];

    public readonly PhysicalAddress PodMac => Read(0);

    public readonly PhysicalAddress GatewayMac => Read(6);

    private readonly PhysicalAddress Read(int offset)
    {
        var bytes = new byte[6];
        for (var i = 0; i < 6; i++)
        {
            bytes[i] = offset == 0 ? Mac[i] : NodeMac[i];
        }
        return new PhysicalAddress(bytes);
    }
}

/// <summary>struct local6_key.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct Local6Key
{
    public fixed byte Address[16];
}

/// <summary>The frame addresses of a delivered packet: the pod's interface and its gateway (the host-side veth).</summary>
public sealed record DeliveryMacs(PhysicalAddress Pod, PhysicalAddress Gateway);

/// <summary>
/// The pods of this node by address (maps <c>mb_local4</c>, <c>mb_local6</c>): with host routing, <c>from_pod</c> judges
/// a packet for one of them by its ingress policy and delivers it into the pod's namespace itself. An entry is
/// written only once the endpoint's programs are attached and removed before they go; an address without one takes
/// the node's stack.
/// </summary>
public sealed unsafe class LocalDeliveryTable(BpfMap v4, BpfMap v6)
{
    public void Set(uint ifIndex, IEnumerable<IPAddress> addresses, DeliveryMacs macs)
    {
        ArgumentNullException.ThrowIfNull(addresses);
        ArgumentNullException.ThrowIfNull(macs);
        var value = new LocalDeliveryValue { IfIndex = ifIndex };
        var pod = macs.Pod.GetAddressBytes();
        var gateway = macs.Gateway.GetAddressBytes();
        if (pod.Length != 6 || gateway.Length != 6)
        {
            throw new ArgumentException($"interface {ifIndex}: Ethernet addresses have 6 bytes", nameof(macs));
        }
        for (var i = 0; i < 6; i++)
        {
            value.Mac[i] = pod[i];
            value.NodeMac[i] = gateway[i];
        }
        foreach (var address in addresses)
        {
            if (address.AddressFamily == AddressFamily.InterNetwork)
            {
                v4.Update(BitConverter.ToUInt32(address.GetAddressBytes()), value);
            }
            else
            {
                v6.Update(Key6(address), value);
            }
        }
    }

    /// <summary>Removes every entry that delivers through <paramref name="ifIndex"/>; returns how many.</summary>
    public int Remove(uint ifIndex)
    {
        var removed = 0;
        foreach (var (key, value) in v4.Entries<uint, LocalDeliveryValue>().ToList())
        {
            removed += value.IfIndex == ifIndex && v4.Delete(key) ? 1 : 0;
        }
        foreach (var (key, value) in v6.Entries<Local6Key, LocalDeliveryValue>().ToList())
        {
            removed += value.IfIndex == ifIndex && v6.Delete(key) ? 1 : 0;
        }
        return removed;
    }

    /// <summary>Every address host routing delivers to, with its entry.</summary>
    public IReadOnlyList<(IPAddress Address, LocalDeliveryValue Value)> Entries()
    {
        var result = v4.Entries<uint, LocalDeliveryValue>().Select(e => (new IPAddress(BitConverter.GetBytes(e.Key)), e.Value)).ToList();
        foreach (var (key, value) in v6.Entries<Local6Key, LocalDeliveryValue>())
        {
            var bytes = new byte[16];
            for (var i = 0; i < 16; i++)
            {
                bytes[i] = key.Address[i];
            }
            result.Add((new IPAddress(bytes), value));
        }
        return result;
    }

    /// <summary>The interfaces that have an entry.</summary>
    public IReadOnlySet<uint> IfIndexes() => Entries().Select(e => e.Value.IfIndex).ToHashSet();

    private static Local6Key Key6(IPAddress address)
    {
        var key = new Local6Key();
        var bytes = address.GetAddressBytes();
        for (var i = 0; i < 16; i++)
        {
            key.Address[i] = bytes[i];
        }
        return key;
    }
}
