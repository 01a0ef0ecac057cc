using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>Reads records from a BPF ring buffer map; each record is handed to the callback as raw bytes.</summary>
public sealed unsafe class RingBufferReader : IDisposable
{
    private readonly GCHandle _self;
    private readonly Action<ReadOnlySpan<byte>> _onRecord;
    private nint _ring;

    public RingBufferReader(BpfMap map, Action<ReadOnlySpan<byte>> onRecord)
    {
        ArgumentNullException.ThrowIfNull(map);
        _onRecord = onRecord;
        _self = GCHandle.Alloc(this);
        _ring = LibBpf.RingBufferNew(map.Fd, &OnSample, GCHandle.ToIntPtr(_self), 0);
        if (_ring == 0)
        {
            _self.Free();
            throw new BpfException($"opening ring buffer {map.Name}", Marshal.GetLastPInvokeError());
        }
    }

    /// <summary>Waits up to <paramref name="timeoutMs"/> for records and delivers them; returns how many.</summary>
    public int Poll(int timeoutMs)
    {
        var result = LibBpf.RingBufferPoll(_ring, timeoutMs);
        return result == -4 ? 0 : BpfException.Check(result, "ring buffer poll"); // EINTR is not an error
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static int OnSample(nint context, nint data, nuint size)
    {
        var reader = (RingBufferReader)GCHandle.FromIntPtr(context).Target!;
        reader._onRecord(new ReadOnlySpan<byte>((void*)data, (int)size));
        return 0;
    }

    public void Dispose()
    {
        if (_ring != 0)
        {
            LibBpf.RingBufferFree(_ring);
            _ring = 0;
            _self.Free();
        }
    }
}
