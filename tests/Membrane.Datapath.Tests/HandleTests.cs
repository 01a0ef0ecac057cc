using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;

namespace Membrane.Datapath.Tests;

/// <summary>Descriptors belong to their loaded object: after it is disposed they cannot be used by mistake.</summary>
public sealed class HandleTests
{
    [Fact]
    public void MapsAndProgramsOfADisposedObjectThrowInsteadOfUsingAStaleDescriptor()
    {
        var datapath = PolicyDatapath.Load();
        var map = datapath.EndpointMap;
        var program = datapath.FromPod;
        map.Update(new EndpointKey { IfIndex = 77 }, new EndpointValue { IPv4 = 1, Flags = EndpointValue.HasIPv4 });
        Assert.True(map.TryLookup(new EndpointKey { IfIndex = 77 }, out _));
        datapath.Dispose();
        Assert.Throws<ObjectDisposedException>(() => map.TryLookup(new EndpointKey { IfIndex = 77 }, out _));
        Assert.Throws<ObjectDisposedException>(() => map.Keys().ToList());
        Assert.Throws<ObjectDisposedException>(() => map.Fd);
        Assert.Throws<ObjectDisposedException>(() => program.Fd);
        Assert.Throws<ObjectDisposedException>(() => program.TestRun(new byte[64]));
    }

    [Fact]
    public void AMirrorOfTheWrongSizeIsRefusedWhenTheMapIsBound()
    {
        using var obj = BpfObject.Load(Path.Combine(BpfObject.ObjectDirectory, PolicyDatapath.ObjectName));
        var error = Assert.Throws<BpfException>(() => obj.Map<IpCache4Key, IpCacheValue>("mb_ipcache6"));
        Assert.Contains("mb_ipcache6", error.Message, StringComparison.Ordinal);
        Assert.Contains("IpCache4Key", error.Message, StringComparison.Ordinal);
    }
}
