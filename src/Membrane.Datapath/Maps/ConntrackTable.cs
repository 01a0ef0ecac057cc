using System.Net;
using System.Net.Sockets;
using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Maps;

/// <summary>One tracked connection of an endpoint, whichever family's map holds it.</summary>
/// <param name="Lo">The lower of the two addresses (with <paramref name="LoPort"/>): the key is normalised.</param>
/// <param name="Kind">ICMP queries: the request's type (the key's kind), so requests of two kinds never share an entry.</param>
public readonly record struct ConntrackTuple(uint IfIndex, byte Protocol, IPAddress Lo, ushort LoPort, IPAddress Hi, ushort HiPort,
    byte Kind = 0);

/// <summary>
/// The conntrack maps of both families (an IPv4 key is less than half the size of an IPv6 one, and hashing the key
/// is a large part of what an established packet costs) behind one view for listing, revalidation and flushing.
/// </summary>
public sealed unsafe class ConntrackTable
{
    private readonly BpfMap _v4;
    private readonly BpfMap _v6;

    public ConntrackTable(BpfMap v4, BpfMap v6)
    {
        _v4 = v4;
        _v6 = v6;
    }

    /// <summary>Seconds from a conntrack timestamp (kernel ticks) to <paramref name="now"/> (see <see cref="KernelTicks.Now"/>).</summary>
    public static double SecondsSince(ulong timestamp, ulong now) => now >= timestamp ? (now - timestamp) / (double)KernelTicks.PerSecond
        : 0;

    /// <summary>Connections tracked now, per family (walks the keys only).</summary>
    public (long IPv4, long IPv6) Count() => (_v4.Keys<Conntrack4Key>().LongCount(), _v6.Keys<Conntrack6Key>().LongCount());

    /// <summary>Entries each family's map holds at most (the LRU evicts the oldest beyond it).</summary>
    public long Capacity => _v4.MaxEntries;

    public IEnumerable<KeyValuePair<ConntrackTuple, ConntrackValue>> Entries()
    {
        foreach (var (key, value) in _v4.Entries<Conntrack4Key, ConntrackValue>())
        {
            yield return new(FromKey(key), value);
        }
        foreach (var (key, value) in _v6.Entries<Conntrack6Key, ConntrackValue>())
        {
            yield return new(FromKey(key), value);
        }
    }

    public bool Delete(ConntrackTuple tuple) =>
        tuple.Lo.AddressFamily == AddressFamily.InterNetwork ? _v4.Delete(ToKey4(tuple)) : _v6.Delete(ToKey6(tuple));

    /// <summary>Removes the entries of one endpoint, or of all when <paramref name="ifIndex"/> is null; returns how many.</summary>
    public int Flush(uint? ifIndex = null)
    {
        var removed = 0;
        foreach (var key in _v4.Keys<Conntrack4Key>())
        {
            removed += (ifIndex is null || key.IfIndex == ifIndex) && _v4.Delete(key) ? 1 : 0;
        }
        foreach (var key in _v6.Keys<Conntrack6Key>())
        {
            removed += (ifIndex is null || key.IfIndex == ifIndex) && _v6.Delete(key) ? 1 : 0;
        }
        return removed;
    }

    private static ConntrackTuple FromKey(Conntrack4Key k) =>
        new(k.IfIndex, k.Protocol, new IPAddress(k.LoAddress), k.LoPort, new IPAddress(k.HiAddress), k.HiPort, k.Kind);

    private static ConntrackTuple FromKey(Conntrack6Key k) =>
        new(k.IfIndex, k.Protocol, new IPAddress(new ReadOnlySpan<byte>(k.LoAddress, 16)), k.LoPort,
            new IPAddress(new ReadOnlySpan<byte>(k.HiAddress, 16)), k.HiPort, k.Kind);

    private static Conntrack4Key ToKey4(ConntrackTuple t)
    {
        Span<byte> lo = stackalloc byte[4], hi = stackalloc byte[4];
        t.Lo.TryWriteBytes(lo, out _);
        t.Hi.TryWriteBytes(hi, out _);
        return new Conntrack4Key
        {
            IfIndex = t.IfIndex,
            LoAddress = BitConverter.ToUInt32(lo),
            HiAddress = BitConverter.ToUInt32(hi),
            LoPort = t.LoPort,
            HiPort = t.HiPort,
            Protocol = t.Protocol,
            Kind = t.Kind,
        };
    }

    private static Conntrack6Key ToKey6(ConntrackTuple t)
    {
        var key = new Conntrack6Key { IfIndex = t.IfIndex, LoPort = t.LoPort, HiPort = t.HiPort, Protocol = t.Protocol, Kind = t.Kind };
        t.Lo.TryWriteBytes(new Span<byte>(key.LoAddress, 16), out _);
        t.Hi.TryWriteBytes(new Span<byte>(key.HiAddress, 16), out _);
        return key;
    }
}
