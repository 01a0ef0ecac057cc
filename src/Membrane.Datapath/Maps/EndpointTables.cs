using System.Globalization;
using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Maps;

/// <summary>
/// One LRU table per endpoint, held by an outer hash of maps by the endpoint's ifindex: what one endpoint fills evicts
/// only its own entries. The conntrack tables (one per family) and the fragment verdicts are kept this way.
/// </summary>
internal sealed class EndpointTables(BpfMap<uint, uint> outer, string innerName, uint keySize, uint valueSize)
{
    public string Name => outer.Name;

    /// <summary>Gives the endpoint a table of <paramref name="capacity"/> entries unless it has one (kept with its entries).</summary>
    public void Ensure(uint ifIndex, uint capacity)
    {
        if (outer.TryLookup(ifIndex, out _))
        {
            return;
        }
        using var table = DescriptorMap.CreateLruHash(innerName, keySize, valueSize, capacity);
        outer.Update(ifIndex, (uint)table.Fd);
    }

    /// <summary>Drops the endpoint's table and its entries; true when it had one.</summary>
    public bool Remove(uint ifIndex) => outer.Delete(ifIndex);

    public IEnumerable<uint> Endpoints() => outer.Keys();

    /// <summary>Runs <paramref name="action"/> on the endpoint's table, if it has one of this layout.</summary>
    public void With(uint ifIndex, Action<BpfMap> action)
    {
        if (!outer.TryLookup(ifIndex, out var id))
        {
            return;
        }
        using var table = DescriptorMap.Open(id, innerName);
        if (table is not null && table.Map.KeySize == keySize)
        {
            action(table.Map);
        }
    }

    /// <summary>
    /// The kernel memory the endpoint's table is charged (its <c>memlock</c> in fdinfo: the table at full size, since
    /// an LRU map preallocates its entries); 0 when it has none.
    /// </summary>
    public long MemoryBytes(uint ifIndex)
    {
        long bytes = 0;
        With(ifIndex, t => bytes = Memlock(t.Fd));
        return bytes;
    }

    private static long Memlock(int fd)
    {
        foreach (var line in File.ReadLines($"/proc/self/fdinfo/{fd}"))
        {
            if (line.StartsWith("memlock:", StringComparison.Ordinal))
            {
                return long.Parse(line.AsSpan("memlock:".Length).Trim(), CultureInfo.InvariantCulture);
            }
        }
        return 0;
    }
}
