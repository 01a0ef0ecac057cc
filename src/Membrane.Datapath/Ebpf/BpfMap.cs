using System.Runtime.InteropServices;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>A BPF map by file descriptor, with access for unmanaged key and value structs of the map's sizes.</summary>
public unsafe class BpfMap
{
    private readonly OwnedFd _fd;

    internal BpfMap(string name, OwnedFd fd, uint keySize, uint valueSize, uint maxEntries)
    {
        Name = name;
        _fd = fd;
        KeySize = keySize;
        ValueSize = valueSize;
        MaxEntries = maxEntries;
    }

    internal BpfMap(BpfMap map)
        : this(map.Name, map._fd, map.KeySize, map.ValueSize, map.MaxEntries)
    {
    }

    public string Name { get; }

    /// <summary>The map's descriptor; throws once the object that loaded it is disposed.</summary>
    public int Fd => _fd.Value;

    public uint KeySize { get; }

    public uint ValueSize { get; }

    public uint MaxEntries { get; }

    public void Update<TKey, TValue>(in TKey key, in TValue value, ulong flags = 0)
        where TKey : unmanaged
        where TValue : unmanaged
    {
        CheckSizes<TKey, TValue>();
        using var fd = _fd.Borrow();
        fixed (TKey* k = &key)
        fixed (TValue* v = &value)
        {
            BpfException.Check(LibBpf.MapUpdate(fd.Fd, k, v, flags), $"update of map {Name}");
        }
    }

    public bool TryLookup<TKey, TValue>(in TKey key, out TValue value)
        where TKey : unmanaged
        where TValue : unmanaged
    {
        CheckSizes<TKey, TValue>();
        value = default;
        using var fd = _fd.Borrow();
        fixed (TKey* k = &key)
        fixed (TValue* v = &value)
        {
            var result = LibBpf.MapLookup(fd.Fd, k, v);
            return result == 0 ? true : result == -2 ? false : throw new BpfException($"lookup in map {Name}", -result);
        }
    }

    public bool Delete<TKey>(in TKey key)
        where TKey : unmanaged
    {
        using var fd = _fd.Borrow();
        fixed (TKey* k = &key)
        {
            var result = LibBpf.MapDelete(fd.Fd, k);
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
        using var fd = _fd.Borrow();
        while (true)
        {
            int result;
            result = first ? LibBpf.MapNextKey(fd.Fd, null, &next) : LibBpf.MapNextKey(fd.Fd, &current, &next);
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
        using var fd = _fd.Borrow();
        fixed (TKey* k = &key)
        fixed (byte* b = buffer)
        {
            var result = LibBpf.MapLookup(fd.Fd, k, b);
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
            throw new ArgumentException($"map {Name} has {KeySize}-byte keys and {ValueSize}-byte values, not {sizeof(TKey)} and " +
                $"{sizeof(TValue)}");
        }
    }
}

/// <summary>
/// A map bound to its key and value types at load: the sizes are checked once there (a mirror that no longer matches
/// the C fails the load, not the first packet's lookup), and access needs no type arguments.
/// </summary>
public sealed class BpfMap<TKey, TValue> : BpfMap
    where TKey : unmanaged
    where TValue : unmanaged
{
    internal unsafe BpfMap(BpfMap map)
        : base(map)
    {
        if (sizeof(TKey) != KeySize || sizeof(TValue) != ValueSize)
        {
            throw new BpfException($"map {Name} has {KeySize}-byte keys and {ValueSize}-byte values; " +
                $"{typeof(TKey).Name} is {sizeof(TKey)} bytes and {typeof(TValue).Name} {sizeof(TValue)}: the C# mirror and bpf/maps.h " +
                    $"disagree");
        }
    }

    public void Update(in TKey key, in TValue value, ulong flags = 0) => Update<TKey, TValue>(key, value, flags);

    public bool TryLookup(in TKey key, out TValue value) => TryLookup<TKey, TValue>(key, out value);

    public bool Delete(in TKey key) => Delete<TKey>(key);

    public IEnumerable<TKey> Keys() => Keys<TKey>();

    public IEnumerable<KeyValuePair<TKey, TValue>> Entries() => Entries<TKey, TValue>();
}
