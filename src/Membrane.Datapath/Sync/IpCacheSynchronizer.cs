using System.Net;
using System.Net.Sockets;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;

namespace Membrane.Datapath.Sync;

/// <summary>Keeps the ipcache maps (address prefix → identity) equal to the engine's view, by diff.</summary>
public sealed class IpCacheSynchronizer(BpfMap v4, BpfMap v6)
{
    private readonly Dictionary<IPNetwork, uint> _written = [];
    private readonly Lock _gate = new();

    public SyncResult Sync(IEnumerable<(IPNetwork Prefix, uint Identity)> entries)
    {
        ArgumentNullException.ThrowIfNull(entries);
        var desired = new Dictionary<IPNetwork, uint>();
        foreach (var (prefix, identity) in entries)
        {
            desired[prefix] = identity;
        }
        lock (_gate)
        {
            int added = 0, updated = 0, removed = 0, unchanged = 0;
            foreach (var (prefix, identity) in desired)
            {
                if (_written.TryGetValue(prefix, out var old))
                {
                    if (old == identity)
                    {
                        unchanged++;
                        continue;
                    }
                    updated++;
                }
                else
                {
                    added++;
                }
                Write(prefix, identity);
            }
            foreach (var prefix in _written.Keys.Where(p => !desired.ContainsKey(p)).ToList())
            {
                Delete(prefix);
                removed++;
            }
            _written.Clear();
            foreach (var (prefix, identity) in desired)
            {
                _written[prefix] = identity;
            }
            return new SyncResult(added, updated, removed, unchanged);
        }
    }

    /// <summary>Reads entries left by a previous agent so stale ones are removed by the next sync.</summary>
    /// <summary>What the kernel maps now (as last written).</summary>
    public Dictionary<IPNetwork, uint> Written()
    {
        lock (_gate)
        {
            return new Dictionary<IPNetwork, uint>(_written);
        }
    }

    /// <summary>Entries written, by family.</summary>
    public (int IPv4, int IPv6) Count
    {
        get
        {
            lock (_gate)
            {
                var v4Count = _written.Keys.Count(p => p.BaseAddress.AddressFamily == AddressFamily.InterNetwork);
                return (v4Count, _written.Count - v4Count);
            }
        }
    }

    /// <summary>
    /// Throws <see cref="MapCapacityException"/> unless each family's map can hold these entries. A sync writes
    /// new entries before deleting old ones, so old and new are counted together.
    /// </summary>
    public void CheckCapacity(IReadOnlyCollection<(IPNetwork Prefix, uint Identity)> entries)
    {
        lock (_gate)
        {
            foreach (var (map, family) in new[] { (v4, AddressFamily.InterNetwork), (v6, AddressFamily.InterNetworkV6) })
            {
                var desired = entries.Select(e => e.Prefix).Where(p => p.BaseAddress.AddressFamily == family).ToHashSet();
                var peak = desired.Count + _written.Keys.Count(p => p.BaseAddress.AddressFamily == family && !desired.Contains(p));
                if (peak > map.MaxEntries)
                {
                    throw new MapCapacityException($"the ipcache map {map.Name} would need {peak:N0} entries and holds " +
                        $"{map.MaxEntries:N0} " +
                        $"({desired.Count:N0} {(family == AddressFamily.InterNetwork ? "IPv4" : "IPv6")} prefixes: pod addresses and " +
                            $"the CIDRs policies name)");
                }
            }
        }
    }

    public void Adopt()
    {
        lock (_gate)
        {
            _written.Clear();
            foreach (var (prefix, identity) in Dump())
            {
                _written[prefix] = identity;
            }
        }
    }

    /// <summary>What the kernel's ipcache maps hold, both families.</summary>
    public IEnumerable<(IPNetwork Prefix, uint Identity)> Dump()
    {
        foreach (var (key, value) in v4.Entries<IpCache4Key, IpCacheValue>())
        {
            yield return (new IPNetwork(new IPAddress(BitConverter.GetBytes(key.Address)), (int)key.PrefixLength), value.Identity);
        }
        foreach (var (key, value) in v6.Entries<IpCache6Key, IpCacheValue>())
        {
            yield return (new IPNetwork(new IPAddress(Bytes(key)), (int)key.PrefixLength), value.Identity);
        }
    }

    private static unsafe byte[] Bytes(IpCache6Key key) => new ReadOnlySpan<byte>(key.Address, 16).ToArray();

    private void Write(IPNetwork prefix, uint identity)
    {
        var value = new IpCacheValue { Identity = identity };
        if (prefix.BaseAddress.AddressFamily == AddressFamily.InterNetwork)
        {
            v4.Update(IpCache4Key.From(prefix), value);
        }
        else
        {
            v6.Update(IpCache6Key.From(prefix), value);
        }
    }

    private void Delete(IPNetwork prefix)
    {
        if (prefix.BaseAddress.AddressFamily == AddressFamily.InterNetwork)
        {
            v4.Delete(IpCache4Key.From(prefix));
        }
        else
        {
            v6.Delete(IpCache6Key.From(prefix));
        }
    }
}
