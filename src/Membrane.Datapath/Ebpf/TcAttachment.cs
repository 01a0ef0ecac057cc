using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

public enum TcDirection
{
    Ingress = 1,
    Egress = 2,
}

/// <summary>Attaches programs to a device's clsact qdisc (tc ingress/egress) through netlink, via libbpf.</summary>
public static unsafe class TcAttachment
{
    public const uint Handle = 1;
    public const uint Priority = 1;

    /// <summary>Attaches (or replaces) the program on the device; creates the clsact qdisc when missing.</summary>
    public static void Attach(int ifIndex, TcDirection direction, BpfProgram program)
    {
        ArgumentNullException.ThrowIfNull(program);
        var hook = Hook(ifIndex, direction);
        var created = LibBpf.TcHookCreate(&hook);
        if (created < 0 && created != -17)
        {
            throw new BpfException($"creating clsact on ifindex {ifIndex}", -created);
        }
        var options = new TcOptions
        {
            Size = (nuint)sizeof(TcOptions),
            ProgramFd = program.Fd,
            Handle = Handle,
            Priority = Priority,
            Flags = 1 /* BPF_TC_F_REPLACE */
        };
        BpfException.Check(LibBpf.TcAttach(&hook, &options), $"attaching {program.Name} to ifindex {ifIndex} ({direction})");
    }

    public static void Detach(int ifIndex, TcDirection direction)
    {
        var hook = Hook(ifIndex, direction);
        var options = new TcOptions { Size = (nuint)sizeof(TcOptions), Handle = Handle, Priority = Priority };
        var result = LibBpf.TcDetach(&hook, &options);
        if (result < 0 && result != -2 && result != -19)
        {
            throw new BpfException($"detaching from ifindex {ifIndex} ({direction})", -result);
        }
    }

    /// <summary>The id of the program attached at our handle and priority, or null.</summary>
    public static uint? Query(int ifIndex, TcDirection direction)
    {
        var hook = Hook(ifIndex, direction);
        var options = new TcOptions { Size = (nuint)sizeof(TcOptions), Handle = Handle, Priority = Priority };
        return LibBpf.TcQuery(&hook, &options) == 0 ? options.ProgramId : null;
    }

    private static TcHook Hook(int ifIndex, TcDirection direction) =>
        new() { Size = (nuint)sizeof(TcHook), IfIndex = ifIndex, AttachPoint = (int)direction };
}
