using System.Runtime.InteropServices;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>A BPF map by file descriptor, with typed access for unmanaged key and value structs.</summary>
public sealed unsafe class BpfMap
{
    internal BpfMap(string name, int fd, uint keySize, uint valueSize, uint maxEntries)
    {
        Name = name;
        Fd = fd;
        KeySize = keySize;
        ValueSize = valueSize;
        MaxEntries = maxEntries;
    }

    public string Name { get; }

    public int Fd { get; }

    public uint KeySize { get; }

    public uint ValueSize { get; }

    public uint MaxEntries { get; }

    public void Update<TKey, TValue>(in TKey key, in TValue value, ulong flags = 0)
        where TKey : unmanaged
        where TValue : unmanaged
    {
        CheckSizes<TKey, TValue>();
        fixed (TKey* k = &key)
        fixed (TValue* v = &value)
        {
            BpfException.Check(LibBpf.MapUpdate(Fd, k, v, flags), $"update of map {Name}");
        }
    }

    public bool TryLookup<TKey, TValue>(in TKey key, out TValue value)
        where TKey : unmanaged
        where TValue : unmanaged
    {
        CheckSizes<TKey, TValue>();
        value = default;
        fixed (TKey* k = &key)
        fixed (TValue* v = &value)
        {
            var result = LibBpf.MapLookup(Fd, k, v);
            return result == 0 ? true : result == -2 ? false : throw new BpfException($"lookup in map {Name}", -result);
        }
    }

    public bool Delete<TKey>(in TKey key)
        where TKey : unmanaged
    {
        fixed (TKey* k = &key)
        {
            var result = LibBpf.MapDelete(Fd, k);
            return result == 0 ? true : result == -2 ? false : throw new BpfException($"delete from map {Name}", -result);
        }
    }

    public IEnumerable<TKey> Keys<TKey>()
        where TKey : unmanaged
    {
        if (sizeof(TKey) != KeySize)
        {
            throw new ArgumentException($"map {Name} has {KeySize}-byte keys, not {sizeof(TKey)}");
        }
        var keys = new List<TKey>();
        TKey current = default;
        TKey next = default;
        var first = true;
        while (true)
        {
            int result;
            result = first ? LibBpf.MapNextKey(Fd, null, &next) : LibBpf.MapNextKey(Fd, &current, &next);
            if (result == -2)
            {
                break;
            }
            BpfException.Check(result, $"iteration of map {Name}");
            keys.Add(next);
            current = next;
            first = false;
        }
        return keys;
    }

    public IEnumerable<KeyValuePair<TKey, TValue>> Entries<TKey, TValue>()
        where TKey : unmanaged
        where TValue : unmanaged
    {
        foreach (var key in Keys<TKey>())
        {
            if (TryLookup<TKey, TValue>(key, out var value))
            {
                yield return new(key, value);
            }
        }
    }

    /// <summary>Per-CPU maps hold one value per possible CPU; this returns them all.</summary>
    public TValue[] LookupPerCpu<TKey, TValue>(in TKey key)
        where TKey : unmanaged
        where TValue : unmanaged
    {
        var cpus = LibBpf.PossibleCpus();
        var stride = (sizeof(TValue) + 7) & ~7;
        var buffer = new byte[stride * cpus];
        fixed (TKey* k = &key)
        fixed (byte* b = buffer)
        {
            var result = LibBpf.MapLookup(Fd, k, b);
            BpfException.Check(result, $"lookup in map {Name}");
            var values = new TValue[cpus];
            for (var i = 0; i < cpus; i++)
            {
                values[i] = MemoryMarshal.Read<TValue>(buffer.AsSpan(i * stride, sizeof(TValue)));
            }
            return values;
        }
    }

    private void CheckSizes<TKey, TValue>()
        where TKey : unmanaged
        where TValue : unmanaged
    {
        if (sizeof(TKey) != KeySize || sizeof(TValue) != ValueSize && ValueSize != 0)
        {
            throw new ArgumentException($"map {Name} has {KeySize}-byte keys and {ValueSize}-byte values, not {sizeof(TKey)} and {sizeof(TValue)}");
        }
    }
}
