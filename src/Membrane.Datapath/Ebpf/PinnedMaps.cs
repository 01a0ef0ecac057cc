using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>
/// What a load does with the maps an earlier version pinned. A pin is adopted only when it is the map this object
/// declares (type, key, value, size, flags and, for a map of maps, its tables' key and value); one of another layout
/// is replaced by a new map (its entries cannot be read under this version's layout, and reusing it would fail the
/// verifier or misread entries), and pins of maps this version no longer has are removed. Both are reported, for
/// the log: the state they held is gone (connections are re-judged as new, the agent rewrites the rest).
/// </summary>
internal static unsafe class PinnedMaps
{
    /// <summary>The pinned map's layout (the leading fields of struct bpf_map_info).</summary>
    internal readonly record struct Layout(uint Type, uint KeySize, uint ValueSize, uint MaxEntries, uint Flags)
    {
        public override string ToString() => $"type {Type}, key {KeySize} B, value {ValueSize} B, {MaxEntries:N0} entries, flags {Flags:x}";
    }

    /// <summary>Why a pin is replaced; <paramref name="Lossless"/> when it held nothing (not worth a log line).</summary>
    internal sealed record Replacement(string Reason, bool Lossless = false);

    private const uint HashOfMaps = 13, ArrayOfMaps = 12; // BPF_MAP_TYPE_*_OF_MAPS

    public static Layout Of(int fd)
    {
        var info = stackalloc uint[6]; // type, id, key_size, value_size, max_entries, map_flags
        var length = 6u * sizeof(uint);
        BpfException.Check(LibBpf.ObjectGetInfoByFd(fd, info, &length), "information on a pinned map");
        return new Layout(info[0], info[2], info[3], info[4], info[5]);
    }

    public static Layout Declared(nint map) =>
        new(LibBpf.MapType(map), LibBpf.MapKeySize(map), LibBpf.MapValueSize(map), LibBpf.MapMaxEntries(map), LibBpf.MapFlags(map));

    /// <summary>Why the pinned map <paramref name="fd"/> is not the map the object declares, or null when it is.</summary>
    public static Replacement? Mismatch(nint map, int fd)
    {
        var (pinned, declared) = (Of(fd), Declared(map));
        if (pinned != declared)
        {
            return new($"pinned as {pinned}, declared as {declared}");
        }
        if (declared.Type is not (HashOfMaps or ArrayOfMaps) || LibBpf.MapInnerMap(map) is var inner && inner == 0)
        {
            return null;
        }
        // The kernel checks every table stored later against the template the outer map was made with, which no
        // map information shows: a table it holds tells, and an empty one is replaced at no cost.
        var table = FirstInnerMap(fd, declared.KeySize);
        if (table is null)
        {
            return new("an empty map of maps (its tables' template cannot be read)", Lossless: true);
        }
        using var owned = new SafeBpfFdHandle(table.Value);
        var held = Of(table.Value);
        var template = Declared(inner);
        return (held.KeySize, held.ValueSize) == (template.KeySize, template.ValueSize) ? null
            : new($"its tables have key {held.KeySize} B and value {held.ValueSize} B, declared {template.KeySize} B and " +
                $"{template.ValueSize} B");
    }

    private static int? FirstInnerMap(int outerFd, uint keySize)
    {
        var key = stackalloc byte[(int)keySize];
        if (LibBpf.MapNextKey(outerFd, null, key) != 0)
        {
            return null;
        }
        uint id;
        if (LibBpf.MapLookup(outerFd, key, &id) != 0)
        {
            return null;
        }
        var fd = LibBpf.MapGetFdById(id);
        return fd >= 0 ? fd : null;
    }

    /// <summary>
    /// Removes the pins in <paramref name="directory"/> named like this datapath's maps (<c>mb_</c>) that are not among
    /// <paramref name="declared"/>: maps of an earlier version. Subdirectories (the tcx links) and other files stay.
    /// </summary>
    public static IReadOnlyList<string> RemoveStale(string directory, IReadOnlySet<string> declared)
    {
        var removed = new List<string>();
        if (!Directory.Exists(directory))
        {
            return removed;
        }
        foreach (var pin in Directory.EnumerateFiles(directory, "mb_*"))
        {
            var name = Path.GetFileName(pin);
            if (!declared.Contains(name))
            {
                File.Delete(pin);
                removed.Add(name);
            }
        }
        return removed;
    }
}
