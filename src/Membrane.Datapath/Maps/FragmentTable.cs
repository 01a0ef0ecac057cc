using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Maps;

/// <summary>
/// The verdicts of first fragments that later fragments follow: one LRU table per endpoint (map mb_frag_tables), so a
/// pod that streams first fragments evicts only its own datagrams' verdicts. Made and dropped with the endpoint's
/// conntrack tables; flushed when its policy changes.
/// </summary>
public sealed unsafe class FragmentTable
{
    /// <summary>Datagrams in flight per endpoint (FRAG_ENDPOINT_ENTRIES in maps.h).</summary>
    public const uint EndpointCapacity = 1024;

    private readonly EndpointTables _tables;

    public FragmentTable(BpfMap<uint, uint> outer)
    {
        ArgumentNullException.ThrowIfNull(outer);
        _tables = new EndpointTables(outer, "mb_frag_ep", (uint)sizeof(FragmentKey), (uint)sizeof(FragmentValue));
    }

    public void AddEndpoint(uint ifIndex) => _tables.Ensure(ifIndex, EndpointCapacity);

    public bool RemoveEndpoint(uint ifIndex) => _tables.Remove(ifIndex);

    /// <summary>The endpoints that have a table.</summary>
    public IReadOnlyList<uint> Endpoints() => _tables.Endpoints().Order().ToList();

    /// <summary>The endpoint's remembered verdicts.</summary>
    public IReadOnlyList<KeyValuePair<FragmentKey, FragmentValue>> Entries(uint ifIndex)
    {
        var entries = new List<KeyValuePair<FragmentKey, FragmentValue>>();
        _tables.With(ifIndex, t => entries.AddRange(t.Entries<FragmentKey, FragmentValue>()));
        return entries;
    }

    /// <summary>Rewrites a remembered verdict (tests age them this way).</summary>
    public void Update(FragmentKey key, FragmentValue value) => _tables.With(key.IfIndex, t => t.Update(key, value));

    /// <summary>
    /// Forgets the verdicts of the endpoints in <paramref name="ifIndexes"/> (all when null): a verdict given under a
    /// policy that changed must not carry the datagram's later fragments. Returns how many.
    /// </summary>
    public int Flush(IReadOnlySet<uint>? ifIndexes = null)
    {
        var removed = 0;
        foreach (var ifIndex in ifIndexes ?? _tables.Endpoints().ToHashSet())
        {
            _tables.With(ifIndex, t => removed += t.Keys<FragmentKey>().Count(k => t.Delete(k)));
        }
        return removed;
    }

    /// <summary>Kernel memory of the endpoint's table (see <see cref="EndpointTables.MemoryBytes"/>).</summary>
    public long MemoryBytes(uint ifIndex) => _tables.MemoryBytes(ifIndex);
}
