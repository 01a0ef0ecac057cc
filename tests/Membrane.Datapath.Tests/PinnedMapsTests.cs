using System.Net;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Interop;
using Membrane.Datapath.Maps;

namespace Membrane.Datapath.Tests;

/// <summary>
/// An upgrade meets the pins an earlier version left: a map of this version's layout is adopted with its entries, one
/// of another layout (the map itself, or the tables a map of maps holds) is replaced, and the pin of a map this
/// version no longer has is removed; the tcx links' directory is left alone.
/// </summary>
public sealed unsafe class PinnedMapsTests : IDisposable
{
    private readonly string _dir = $"/sys/fs/bpf/mbtest-pins-{Guid.NewGuid():N}";

    public PinnedMapsTests() => Directory.CreateDirectory(Path.Combine(_dir, "links"));

    public void Dispose() => Directory.Delete(_dir, recursive: true);

    private PolicyDatapath Load() => PolicyDatapath.Load(new LoadOptions { PinDirectory = _dir });

    private void Pin(string name, uint type, uint keySize, uint valueSize, uint maxEntries, void* options = null)
    {
        var fd = LibBpf.MapCreate(type, name, keySize, valueSize, maxEntries, options);
        BpfException.Check(fd, $"creation of {name}");
        try
        {
            BpfException.Check(LibBpf.ObjPin(fd, Path.Combine(_dir, name)), $"pinning {name}");
        }
        finally
        {
            _ = LibBpf.Close(fd);
        }
    }

    [Fact]
    public void AMapOfThisLayoutIsAdoptedWithItsEntries()
    {
        using (var first = Load())
        {
            Assert.Empty(first.Bpf.PinChanges);
            first.Endpoints.Set(5, [IPAddress.Parse("10.9.0.5")]);
        }
        using var second = Load();
        Assert.Empty(second.Bpf.PinChanges);
        Assert.Contains(5u, second.Endpoints.IfIndexes());
        Assert.Contains(5u, second.Conntrack.Endpoints());
        Assert.Contains(5u, second.Fragments.Endpoints());
    }

    [Fact]
    public void PinsOfAnotherLayoutAreReplacedAndPinsOfRemovedMapsRemoved()
    {
        Pin("mb_frag", LibBpf.MapTypeLruHash, 44, 16, 16384); // the shared fragment table of earlier versions
        Pin("mb_ct4", LibBpf.MapTypeLruHash, 20, 40, 262144); // the shared conntrack table of earlier versions
        Pin("mb_endpoints", LibBpf.MapTypeLruHash, 4, 24, 65536); // this name, another type and value size

        // A map of maps whose tables have another key: only the tables it holds tell (the kernel shows no template).
        var innerFd = LibBpf.MapCreate(LibBpf.MapTypeLruHash, "old_frag_ep", 40, 16, 1024, null);
        BpfException.Check(innerFd, "creation of the old table");
        try
        {
            var options = stackalloc byte[32]; // struct bpf_map_create_opts up to map_flags: sz, four BTF ids, inner_map_fd
            new Span<byte>(options, 32).Clear();
            *(ulong*)options = 32;
            *(uint*)(options + 24) = (uint)innerFd;
            Pin("mb_frag_tables", 13, 4, 4, 65536, options); // BPF_MAP_TYPE_HASH_OF_MAPS
            var outer = LibBpf.ObjGet(Path.Combine(_dir, "mb_frag_tables"));
            BpfException.Check(outer, "open of the planted map of maps");
            uint key = 5, value = (uint)innerFd;
            BpfException.Check(LibBpf.MapUpdate(outer, &key, &value, 0), "storing the old table");
            _ = LibBpf.Close(outer);
        }
        finally
        {
            _ = LibBpf.Close(innerFd);
        }

        using var datapath = Load();
        var changes = datapath.Bpf.PinChanges;
        Assert.Contains(changes, c => c.StartsWith("replaced the pinned map mb_endpoints (pinned as type 9", StringComparison.Ordinal));
        Assert.Contains(changes, c => c.StartsWith("replaced the pinned map mb_frag_tables (its tables have key 40 B",
            StringComparison.Ordinal));
        Assert.Contains("removed the pinned map mb_frag: this version has no such map", changes);
        Assert.Contains("removed the pinned map mb_ct4: this version has no such map", changes);
        Assert.Equal(4, changes.Count);
        Assert.False(File.Exists(Path.Combine(_dir, "mb_frag")));
        Assert.True(Directory.Exists(Path.Combine(_dir, "links")), "the tcx links' directory stays");
        Assert.Empty(datapath.Fragments.Endpoints());

        // The replacements are this version's maps, pinned: the datapath works on them and the next start adopts them.
        datapath.Endpoints.Set(5, [IPAddress.Parse("10.9.0.5")]);
        Assert.Single(datapath.Fragments.Endpoints());
        using var again = Load();
        Assert.Empty(again.Bpf.PinChanges);
        Assert.Contains(5u, again.Endpoints.IfIndexes());
    }
}
