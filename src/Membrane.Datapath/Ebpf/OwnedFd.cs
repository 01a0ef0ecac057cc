using System.Runtime.InteropServices;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>The libbpf object of a loaded file: closing it closes every program and map descriptor it holds.</summary>
internal sealed class SafeBpfObjectHandle : SafeHandle
{
    public SafeBpfObjectHandle(nint handle)
        : base(0, ownsHandle: true) => SetHandle(handle);

    public override bool IsInvalid => handle == 0;

    protected override bool ReleaseHandle()
    {
        LibBpf.ObjectClose(handle);
        return true;
    }
}

/// <summary>
/// A program's or map's file descriptor, owned by its loaded object. Usable while the object is open; once it is
/// disposed every use throws <see cref="ObjectDisposedException"/> instead of acting on a number the kernel may
/// since have given to something else. A borrow keeps the object open for the length of one system call.
/// </summary>
public sealed class OwnedFd
{
    private readonly SafeHandle _owner;
    private readonly int _fd;
    private readonly string _name;

    internal OwnedFd(SafeHandle owner, int fd, string name)
    {
        _owner = owner;
        _fd = fd;
        _name = name;
    }

    /// <summary>The descriptor, for calls that keep no reference beyond the call.</summary>
    public int Value => _owner.IsClosed ? throw Disposed() : _fd;

    /// <summary>Keeps the owning object open until the lease is disposed.</summary>
    public FdLease Borrow()
    {
        var added = false;
        try
        {
            _owner.DangerousAddRef(ref added);
        }
        catch (ObjectDisposedException)
        {
            throw Disposed();
        }
        return new FdLease(_owner, _fd);
    }

    private ObjectDisposedException Disposed() => new(_name, $"{_name} belongs to a BPF object that was disposed");
}

/// <summary>A borrowed descriptor: valid until disposed.</summary>
public readonly struct FdLease : IDisposable
{
    private readonly SafeHandle _owner;

    internal FdLease(SafeHandle owner, int fd)
    {
        _owner = owner;
        Fd = fd;
    }

    public int Fd { get; }

    public void Dispose() => _owner.DangerousRelease();
}
