using System.Net;
using System.Net.Sockets;
using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Maps;

/// <summary>One tracked connection of an endpoint, whichever family's map holds it.</summary>
/// <param name="Lo">The lower of the two addresses (with <paramref name="LoPort"/>): the key is normalised.</param>
/// <param name="Kind">ICMP queries: the request's type (the key's kind), so requests of two kinds never share an entry.</param>
public readonly record struct ConntrackTuple(uint IfIndex, byte Protocol, IPAddress Lo, ushort LoPort, IPAddress Hi, ushort HiPort,
    byte Kind = 0);

/// <summary>How full one endpoint's tables are, and the kernel memory they (and its fragment table) are charged.</summary>
public readonly record struct ConntrackUsage(uint IfIndex, long IPv4, long IPv6, long Capacity, long MemoryBytes = 0);

/// <summary>
/// The conntrack tables: one LRU map per endpoint and family (an IPv4 key is less than half the size of an IPv6 one,
/// and hashing the key is a large part of what an established packet costs), held by the outer maps mb_ct4_tables and mb_ct6_tables
/// by the endpoint's ifindex. An endpoint's flood evicts only its own connections. One view for listing,
/// revalidation and flushing.
/// </summary>
public sealed unsafe class ConntrackTable
{
    /// <summary>Entries per endpoint and family unless the agent says otherwise (CT_ENDPOINT_ENTRIES in maps.h).</summary>
    public const uint DefaultEndpointCapacity = 8192;

    private readonly EndpointTables _v4;
    private readonly EndpointTables _v6;
    private readonly FragmentTable _fragments;
    private readonly Lock _gate = new();

    public ConntrackTable(BpfMap<uint, uint> v4, BpfMap<uint, uint> v6, FragmentTable fragments)
    {
        ArgumentNullException.ThrowIfNull(v4);
        ArgumentNullException.ThrowIfNull(v6);
        ArgumentNullException.ThrowIfNull(fragments);
        _v4 = new EndpointTables(v4, "mb_ct4_ep", (uint)sizeof(Conntrack4Key), (uint)sizeof(ConntrackValue));
        _v6 = new EndpointTables(v6, "mb_ct6_ep", (uint)sizeof(Conntrack6Key), (uint)sizeof(ConntrackValue));
        _fragments = fragments;
    }

    /// <summary>Entries each endpoint's table of each family holds at most (the LRU evicts its oldest beyond it).</summary>
    public uint EndpointCapacity
    {
        get;
        set => field = value is >= 16 and <= 1 << 20 ? value
            : throw new ArgumentOutOfRangeException(nameof(value), value, "a conntrack table holds 16 to 1,048,576 entries");
    } = DefaultEndpointCapacity;

    /// <summary>Seconds from a conntrack timestamp (kernel ticks) to <paramref name="now"/> (see <see cref="KernelTicks.Now"/>).</summary>
    public static double SecondsSince(ulong timestamp, ulong now) => now >= timestamp ? (now - timestamp) / (double)KernelTicks.PerSecond
        : 0;

    /// <summary>
    /// Gives the endpoint its tables (both families, and its fragment verdicts) unless it has them: before its programs
    /// run, or it tracks nothing. A table that exists is kept with its connections (a restarted agent adopts them).
    /// </summary>
    public void AddEndpoint(uint ifIndex)
    {
        lock (_gate)
        {
            _v4.Ensure(ifIndex, EndpointCapacity);
            _v6.Ensure(ifIndex, EndpointCapacity);
            _fragments.AddEndpoint(ifIndex);
        }
    }

    /// <summary>Drops the endpoint's tables and their connections (and fragment verdicts); true when it had any.</summary>
    public bool RemoveEndpoint(uint ifIndex)
    {
        lock (_gate)
        {
            return _v4.Remove(ifIndex) | _v6.Remove(ifIndex) | _fragments.RemoveEndpoint(ifIndex);
        }
    }

    /// <summary>The endpoints that have tables.</summary>
    public IReadOnlyList<uint> Endpoints() => _v4.Endpoints().Union(_v6.Endpoints()).Union(_fragments.Endpoints()).Order().ToList();

    /// <summary>Connections tracked now, per family (walks the keys only).</summary>
    public (long IPv4, long IPv6) Count()
    {
        var usage = Usage();
        return (usage.Sum(u => u.IPv4), usage.Sum(u => u.IPv6));
    }

    /// <summary>Each endpoint's use of its tables.</summary>
    public IReadOnlyList<ConntrackUsage> Usage() => Endpoints().Select(ifIndex =>
    {
        long v4 = 0, v6 = 0, capacity = 0;
        _v4.With(ifIndex, t => { v4 = t.Keys<Conntrack4Key>().LongCount(); capacity = t.MaxEntries; });
        _v6.With(ifIndex, t => { v6 = t.Keys<Conntrack6Key>().LongCount(); capacity = t.MaxEntries; });
        var memory = _v4.MemoryBytes(ifIndex) + _v6.MemoryBytes(ifIndex) + _fragments.MemoryBytes(ifIndex);
        return new ConntrackUsage(ifIndex, v4, v6, capacity, memory);
    }).ToList();

    public IEnumerable<KeyValuePair<ConntrackTuple, ConntrackValue>> Entries()
    {
        var entries = new List<KeyValuePair<ConntrackTuple, ConntrackValue>>();
        foreach (var ifIndex in Endpoints())
        {
            _v4.With(ifIndex, t =>
                entries.AddRange(t.Entries<Conntrack4Key, ConntrackValue>().Select(e => KeyValuePair.Create(FromKey(e.Key), e.Value))));
            _v6.With(ifIndex, t =>
                entries.AddRange(t.Entries<Conntrack6Key, ConntrackValue>().Select(e => KeyValuePair.Create(FromKey(e.Key), e.Value))));
        }
        return entries;
    }

    public bool Delete(ConntrackTuple tuple)
    {
        var deleted = false;
        if (tuple.Lo.AddressFamily == AddressFamily.InterNetwork)
        {
            _v4.With(tuple.IfIndex, t => deleted = t.Delete(ToKey4(tuple)));
        }
        else
        {
            _v6.With(tuple.IfIndex, t => deleted = t.Delete(ToKey6(tuple)));
        }
        return deleted;
    }

    /// <summary>Rewrites a tracked connection's value (tests age connections this way); false when it is not tracked.</summary>
    public bool Update(ConntrackTuple tuple, ConntrackValue value)
    {
        const ulong existingOnly = 2; // BPF_EXIST: never creates an entry
        var updated = false;
        if (tuple.Lo.AddressFamily == AddressFamily.InterNetwork)
        {
            _v4.With(tuple.IfIndex, t =>
            {
                if (t.TryLookup<Conntrack4Key, ConntrackValue>(ToKey4(tuple), out _))
                {
                    t.Update(ToKey4(tuple), value, existingOnly);
                    updated = true;
                }
            });
        }
        else
        {
            _v6.With(tuple.IfIndex, t =>
            {
                if (t.TryLookup<Conntrack6Key, ConntrackValue>(ToKey6(tuple), out _))
                {
                    t.Update(ToKey6(tuple), value, existingOnly);
                    updated = true;
                }
            });
        }
        return updated;
    }

    /// <summary>Removes the entries of one endpoint, or of all when <paramref name="ifIndex"/> is null; returns how many.</summary>
    public int Flush(uint? ifIndex = null)
    {
        var removed = 0;
        foreach (var endpoint in ifIndex is { } one ? [one] : Endpoints())
        {
            _v4.With(endpoint, t =>
                removed += t.Keys<Conntrack4Key>().Count(k => t.Delete(k)));
            _v6.With(endpoint, t =>
                removed += t.Keys<Conntrack6Key>().Count(k => t.Delete(k)));
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
