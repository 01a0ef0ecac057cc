using System.Runtime.InteropServices;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>
/// tcx attachment (kernel 6.6+): a program on a device's tc ingress or egress as a BPF link (BPF_LINK_CREATE with
/// BPF_TCX_INGRESS/EGRESS), pinned in bpffs so it outlives the agent: a restarted agent opens the pin and swaps the
/// link's program in place (BPF_LINK_UPDATE), and the device is never without one. A link goes with its device; its
/// pin is removed with the endpoint.
/// </summary>
public sealed unsafe class TcxLinks(string pinDirectory)
{
    private const uint TcxIngress = 46, TcxEgress = 47; // enum bpf_attach_type (Debian's headers predate them)

    public string PinDirectory { get; } = pinDirectory;

    /// <summary>Whether the running kernel has tcx: querying lo's tcx ingress succeeds only where the attach type exists.</summary>
    public static bool Supported()
    {
        uint flags = 0, count = 0;
        return LibBpf.ProgramQuery(1, TcxIngress, 0, &flags, null, &count) == 0;
    }

    public string PinPath(int ifIndex, TcDirection direction) =>
        Path.Combine(PinDirectory, $"if{ifIndex}-{(direction == TcDirection.Ingress ? "ingress" : "egress")}");

    /// <summary>
    /// Attaches <paramref name="program"/>: updates the pinned link when it is still on this device and direction,
    /// else creates and pins a new one. Call in the device's network namespace.
    /// </summary>
    public void Attach(int ifIndex, TcDirection direction, BpfProgram program)
    {
        ArgumentNullException.ThrowIfNull(program);
        var pin = PinPath(ifIndex, direction);
        if (Open(pin) is { } existing)
        {
            try
            {
                var (linkIfIndex, attachType, programId) = Info(existing);
                if (linkIfIndex == ifIndex && attachType == AttachType(direction))
                {
                    if (programId != program.Id)
                    {
                        BpfException.Check(LibBpf.LinkUpdate(existing, program.Fd, null),
                            $"replacing the program of tcx link {pin} with {program.Name}");
                    }
                    return;
                }
            }
            finally
            {
                _ = LibBpf.Close(existing);
            }
            File.Delete(pin); // the link of a device that is gone (its number reused), or of another direction
        }
        Directory.CreateDirectory(PinDirectory);
        var link = LibBpf.LinkCreate(program.Fd, ifIndex, AttachType(direction), null);
        if (link < 0)
        {
            throw new BpfException($"attaching {program.Name} to ifindex {ifIndex} ({direction}) with a tcx link", -link);
        }
        try
        {
            BpfException.Check(LibBpf.ObjPin(link, pin), $"pinning the tcx link of ifindex {ifIndex} at {pin}");
        }
        finally
        {
            _ = LibBpf.Close(link);
        }
    }

    /// <summary>Detaches and unpins the link, if there is one.</summary>
    public void Detach(int ifIndex, TcDirection direction)
    {
        var pin = PinPath(ifIndex, direction);
        if (Open(pin) is { } link)
        {
            _ = LibBpf.LinkDetach(link); // fails only when the device is already gone, which detached it
            _ = LibBpf.Close(link);
        }
        if (File.Exists(pin))
        {
            File.Delete(pin);
        }
    }

    /// <summary>The id of the program on the device's pinned link, or null (no pin, or the device is gone).</summary>
    public uint? Query(int ifIndex, TcDirection direction)
    {
        if (Open(PinPath(ifIndex, direction)) is not { } link)
        {
            return null;
        }
        try
        {
            var (linkIfIndex, attachType, programId) = Info(link);
            return linkIfIndex == ifIndex && attachType == AttachType(direction) ? programId : null;
        }
        finally
        {
            _ = LibBpf.Close(link);
        }
    }

    /// <summary>Removes pins whose link no longer has a device; returns how many.</summary>
    public int PruneDefunct()
    {
        if (!Directory.Exists(PinDirectory))
        {
            return 0;
        }
        var pruned = 0;
        foreach (var pin in Directory.EnumerateFiles(PinDirectory).ToList())
        {
            var link = Open(pin);
            var defunct = link is not { } fd || Info(fd).IfIndex == 0;
            if (link is { } open)
            {
                _ = LibBpf.Close(open);
            }
            if (defunct)
            {
                File.Delete(pin);
                pruned++;
            }
        }
        return pruned;
    }

    private static uint AttachType(TcDirection direction) => direction == TcDirection.Ingress ? TcxIngress : TcxEgress;

    private static int? Open(string pin)
    {
        if (!File.Exists(pin))
        {
            return null;
        }
        var fd = LibBpf.ObjGet(pin);
        return fd >= 0 ? fd : null;
    }

    /// <summary>
    /// struct bpf_link_info: type, id, prog_id, then (8-aligned) the tcx part: ifindex (0 once the device is gone), attach type.
    /// </summary>
    private static (int IfIndex, uint AttachType, uint ProgramId) Info(int link)
    {
        var info = stackalloc byte[128];
        new Span<byte>(info, 128).Clear();
        var length = 128u;
        BpfException.Check(LibBpf.ObjectGetInfoByFd(link, info, &length), "reading a tcx link's info");
        return (MemoryMarshal.Read<int>(new ReadOnlySpan<byte>(info + 16, 4)), MemoryMarshal.Read<uint>(new ReadOnlySpan<byte>(info + 20,
            4)), MemoryMarshal.Read<uint>(new ReadOnlySpan<byte>(info + 8, 4)));
    }
}
