using System.Runtime.InteropServices;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>A descriptor the process owns on its own (not through a loaded object): closed when disposed.</summary>
internal sealed class SafeBpfFdHandle : SafeHandle
{
    public SafeBpfFdHandle(int fd)
        : base(-1, ownsHandle: true) => SetHandle(fd);

    public override bool IsInvalid => handle < 0;

    protected override bool ReleaseHandle() => LibBpf.Close((int)handle) == 0;
}

/// <summary>
/// A map that no object file declares: one the process created (an inner map of a map-in-map) or opened by its id.
/// Disposing it closes this process's descriptor; the map lives on while an outer map holds it.
/// </summary>
public sealed class DescriptorMap : IDisposable
{
    private readonly SafeBpfFdHandle _handle;

    private DescriptorMap(string name, int fd, uint keySize, uint valueSize, uint maxEntries)
    {
        _handle = new SafeBpfFdHandle(fd);
        Map = new BpfMap(name, new OwnedFd(_handle, fd, $"map {name}"), keySize, valueSize, maxEntries);
    }

    public BpfMap Map { get; }

    /// <summary>The descriptor, for storing the map in an outer map.</summary>
    public int Fd => Map.Fd;

    /// <summary>Creates an LRU hash map (BPF_MAP_TYPE_LRU_HASH).</summary>
    public static unsafe DescriptorMap CreateLruHash(string name, uint keySize, uint valueSize, uint maxEntries)
    {
        var fd = LibBpf.MapCreate(LibBpf.MapTypeLruHash, name, keySize, valueSize, maxEntries, null);
        BpfException.Check(fd, $"creation of map {name} ({maxEntries} entries)");
        return new DescriptorMap(name, fd, keySize, valueSize, maxEntries);
    }

    /// <summary>Opens the map with this id (as an outer map reports its inner maps), or null when it is gone.</summary>
    public static unsafe DescriptorMap? Open(uint id, string name)
    {
        var fd = LibBpf.MapGetFdById(id);
        if (fd == -2)
        {
            return null;
        }
        BpfException.Check(fd, $"open of map id {id}");
        // The leading fields of struct bpf_map_info: type, id, key_size, value_size, max_entries, map_flags.
        var info = stackalloc uint[6];
        var length = 6u * sizeof(uint);
        var result = LibBpf.ObjectGetInfoByFd(fd, info, &length);
        if (result < 0)
        {
            _ = LibBpf.Close(fd);
            BpfException.Check(result, $"information on map id {id}");
        }
        return new DescriptorMap(name, fd, info[2], info[3], info[4]);
    }

    public void Dispose() => _handle.Dispose();
}
