using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;

namespace Membrane.Datapath.Maps;

// Mirrors of the structs in bpf/maps.h. Field order and sizes must match the C exactly.

[StructLayout(LayoutKind.Sequential)]
public struct PolicyMapKey : IEquatable<PolicyMapKey>
{
    public const uint L3PrefixLength = 72;
    public const uint FullPrefixLength = 96;

    public uint PrefixLength;
    public uint IfIndex;
    public uint Identity;
    public byte Direction;
    public byte Protocol;
    public ushort PortNetworkOrder;

    public readonly ushort Port => BinaryPrimitives.ReverseEndianness(PortNetworkOrder);

    public readonly bool Equals(PolicyMapKey other) =>
        PrefixLength == other.PrefixLength && IfIndex == other.IfIndex && Identity == other.Identity
        && Direction == other.Direction && Protocol == other.Protocol && PortNetworkOrder == other.PortNetworkOrder;

    public override readonly bool Equals(object? obj) => obj is PolicyMapKey k && Equals(k);

    public override readonly int GetHashCode() => HashCode.Combine(PrefixLength, IfIndex, Identity, Direction, Protocol, PortNetworkOrder);

    public static bool operator ==(PolicyMapKey left, PolicyMapKey right) => left.Equals(right);

    public static bool operator !=(PolicyMapKey left, PolicyMapKey right) => !left.Equals(right);
}

[StructLayout(LayoutKind.Sequential)]
public struct PolicyMapValue
{
    public ulong Packets;
    public ulong Bytes;
    public uint RuleId;
    public byte Deny;
    public byte Kind;
    public ushort Pad;
}

[StructLayout(LayoutKind.Sequential)]
public struct IpCache4Key
{
    public uint PrefixLength;
    public uint Address; // network byte order, as in the packet

    public static IpCache4Key From(IPNetwork prefix) => new()
    {
        PrefixLength = (uint)prefix.PrefixLength,
        Address = BitConverter.ToUInt32(prefix.BaseAddress.GetAddressBytes()),
    };

    public readonly IPNetwork ToNetwork() => new(new IPAddress(BitConverter.GetBytes(Address)), (int)PrefixLength);
}

/// <summary>
/// Compared by all its bytes: the runtime's default equality of a struct with a fixed buffer compares the buffer's
/// first byte only (fd00:102:: and fd00:103:: were the same key to a dictionary).
/// </summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct IpCache6Key : IEquatable<IpCache6Key>
{
    public uint PrefixLength;
    public fixed byte Address[16];

    public readonly bool Equals(IpCache6Key other)
    {
        fixed (byte* mine = Address)
        {
            return PrefixLength == other.PrefixLength
                && new ReadOnlySpan<byte>(mine, 16).SequenceEqual(new ReadOnlySpan<byte>(other.Address, 16));
        }
    }

    public override readonly bool Equals(object? obj) => obj is IpCache6Key other && Equals(other);

    public override readonly int GetHashCode()
    {
        fixed (byte* mine = Address)
        {
            var hash = new HashCode();
            hash.Add(PrefixLength);
            hash.AddBytes(new ReadOnlySpan<byte>(mine, 16));
            return hash.ToHashCode();
        }
    }

    public static bool operator ==(IpCache6Key left, IpCache6Key right) => left.Equals(right);

    public static bool operator !=(IpCache6Key left, IpCache6Key right) => !left.Equals(right);

    public static IpCache6Key From(IPNetwork prefix)
    {
        var key = new IpCache6Key { PrefixLength = (uint)prefix.PrefixLength };
        var bytes = prefix.BaseAddress.GetAddressBytes();
        for (var i = 0; i < 16; i++)
        {
            key.Address[i] = bytes[i];
        }
        return key;
    }

    public readonly IPNetwork ToNetwork()
    {
        var bytes = new byte[16];
        for (var i = 0; i < 16; i++)
        {
            bytes[i] = Address[i];
        }
        return new IPNetwork(new IPAddress(bytes), (int)PrefixLength);
    }
}

[StructLayout(LayoutKind.Sequential)]
public struct IpCacheValue
{
    public uint Identity;
    public uint Flags;
}

/// <summary>IPv4 conntrack key: the lower address/port pair first, so both directions share it.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct Conntrack4Key
{
    public uint IfIndex;
    public uint LoAddress; // network byte order, as on the wire
    public uint HiAddress;
    public ushort LoPort;
    public ushort HiPort;
    public byte Protocol;
    public byte Kind; // ICMP queries: the request's type (kind in maps.h), else 0
    public ushort Pad0;
}

/// <summary>IPv6 conntrack key, normalised like <see cref="Conntrack4Key"/>.</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct Conntrack6Key
{
    public uint IfIndex;
    public fixed byte LoAddress[16];
    public fixed byte HiAddress[16];
    public ushort LoPort;
    public ushort HiPort;
    public byte Protocol;
    public byte Kind; // ICMP queries: the request's type (kind in maps.h), else 0
    public ushort Pad0;
}

[StructLayout(LayoutKind.Sequential)]
public struct ConntrackValue
{
    public const byte SeenFinForward = 1, SeenFinReverse = 2, SeenRst = 4, SeenReply = 8;

    public ulong Created;  // kernel ticks (jiffies): see KernelTicks
    public ulong LastSeen;
    public ulong Packets;
    public ulong Bytes;
    public uint RuleId;
    public byte Flags;
    public byte Direction;
    public byte OpenedLo;
    public byte PeerGeneration; // host routing: the generation under which the local destination admitted it (from_pod)
}

[StructLayout(LayoutKind.Sequential)]
public struct Counter
{
    public ulong Packets;
    public ulong Bytes;
}

[StructLayout(LayoutKind.Sequential)]
public unsafe struct DatapathConfig
{
    public const uint VerdictEvents = 1;
    public const uint DropEvents = 2;
    public const uint Audit = 4;
    public const uint TraceEvents = 8;
    public const uint HostRouting = 16;

    public uint Flags;
    public uint Generation; // advanced after every change: from_pod's peer shortcut holds only within one
    public uint TunnelIfIndex; // tunnel mode: the node's VXLAN device, where from_pod sends other nodes' pods (0: none)
    public fixed byte TunnelMac[6];
    public ushort Pad;
}

/// <summary>One record of the events ring buffer (struct event).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct DatapathEvent
{
    public ulong TimestampNs;
    public uint IfIndex;
    public uint PeerIdentity;
    public uint RuleId;
    public uint Length;
    public fixed byte Source[16];
    public fixed byte Destination[16];
    public ushort SourcePort;
    public ushort DestinationPort;
    public byte Type;
    public byte Direction;
    public byte Reason;
    public byte Family;
    public byte Protocol;
    public byte IcmpType;
    public byte IcmpCode;
    public byte MatchKind;

    public readonly IPAddress SourceAddress => Address(true);

    public readonly IPAddress DestinationAddress => Address(false);

    private readonly IPAddress Address(bool source)
    {
        fixed (byte* s = Source)
        {
            var start = source ? s : s + 16;
            return new IPAddress(new ReadOnlySpan<byte>(start, Family == 4 ? 4 : 16));
        }
    }

    public static DatapathEvent Read(ReadOnlySpan<byte> record) => MemoryMarshal.Read<DatapathEvent>(record);
}

public enum DropReason : byte
{
    Allowed = 0,
    Policy = 1,
    PolicyDeny = 2,
    Malformed = 3,
    Fragment = 4,
    InvalidSource = 5,
    UnknownL3 = 6,
    Tunnel = 7,
}

public enum EventType : byte
{
    Drop = 1,
    Verdict = 2,
    Audit = 3,
    Trace = 4,
}

/// <summary>Why a traced packet passed without a policy decision (<c>enum trace_reason</c>): the reason byte of a trace event.</summary>
public enum TraceReason : byte
{
    Established = 0,
    Reply = 1,
    Related = 2,
}

/// <summary>How flows name what the datapath reports (the reference system's flow names where it has them).</summary>
public static class FlowNames
{
    public static string Trace(TraceReason reason) => reason switch
    {
        TraceReason.Established => "ESTABLISHED",
        TraceReason.Reply => "REPLY",
        TraceReason.Related => "RELATED",
        _ => $"trace reason {(int)reason}",
    };
}

public static class DropReasons
{
    public static string Describe(DropReason reason) => reason switch
    {
        DropReason.Allowed => "Policy allowed",
        DropReason.Policy => "Policy denied",
        DropReason.PolicyDeny => "Policy denied by denylist",
        DropReason.Malformed => "Malformed packet",
        DropReason.Fragment => "Fragment of a denied or unseen datagram",
        DropReason.InvalidSource => "Invalid source address (not the pod's own)",
        DropReason.UnknownL3 => "Unknown L3 protocol (not IPv4, IPv6 or ARP; VLAN tags included)",
        DropReason.Tunnel => "Tunnel traffic from an address that is no node, or to a prefix no node hosts",
        _ => $"reason {(int)reason}",
    };

    public static AddressFamily Family(byte family) => family == 4 ? AddressFamily.InterNetwork : AddressFamily.InterNetworkV6;
}

/// <summary>Key of the endpoint address map (struct endpoint_key): the pod's host-side veth.</summary>
[StructLayout(LayoutKind.Sequential)]
public struct EndpointKey
{
    public uint IfIndex;
}

/// <summary>The addresses a pod may send from (struct endpoint_value).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct EndpointValue
{
    public const uint HasIPv4 = 1, HasIPv6 = 2, Audit = 4;

    public uint IPv4; // network byte order, as on the wire
    public fixed byte IPv6[16];
    public uint Flags;
}

/// <summary>A first fragment's remembered verdict and when it was given (struct frag_value).</summary>
[StructLayout(LayoutKind.Sequential)]
public struct FragmentValue
{
    public ulong Created; // kernel ticks (jiffies)
    public byte Allowed;
    public byte Pad0;
    public ushort Pad1;
    public uint Pad2;
}

/// <summary>The key of a first fragment's remembered verdict (struct frag_key).</summary>
[StructLayout(LayoutKind.Sequential)]
public unsafe struct FragmentKey
{
    public uint IfIndex;
    public uint Id;
    public byte Direction;
    public byte Family;
    public byte Protocol;
    public byte Pad;
    public fixed byte Source[16];
    public fixed byte Destination[16];
}
