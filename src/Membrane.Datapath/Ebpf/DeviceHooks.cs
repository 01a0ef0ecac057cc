namespace Membrane.Datapath.Ebpf;

/// <summary>How programs are attached to devices.</summary>
public enum AttachMode
{
    /// <summary>tcx links (kernel 6.6+), pinned: the reference system's choice on such kernels.</summary>
    Tcx,

    /// <summary>A clsact qdisc with a cls_bpf filter (netlink): every kernel Membrane runs on.</summary>
    Clsact,
}

/// <summary>
/// Attaches the programs to devices with one mechanism, tcx links or clsact filters, and removes what the other left
/// (an agent that changed mechanism across a restart takes over the device without a moment unfiltered: the new
/// attachment is made before the old one goes).
/// </summary>
public sealed class DeviceHooks
{
    private readonly TcxLinks? _links;

    /// <summary>tcx needs <paramref name="linkPinDirectory"/> (in bpffs); clsact without one leaves links alone.</summary>
    public DeviceHooks(AttachMode mode, string? linkPinDirectory)
    {
        if (mode == AttachMode.Tcx && linkPinDirectory is null)
        {
            throw new ArgumentException("tcx links need a pin directory", nameof(linkPinDirectory));
        }
        Mode = mode;
        _links = linkPinDirectory is null ? null : new TcxLinks(linkPinDirectory);
    }

    public AttachMode Mode { get; }

    /// <summary>Where tcx links are pinned, if anywhere.</summary>
    public string? LinkPinDirectory => _links?.PinDirectory;

    /// <summary>tcx where the kernel has it, else clsact.</summary>
    public static AttachMode Probe() => TcxLinks.Supported() ? AttachMode.Tcx : AttachMode.Clsact;

    public static string Describe(AttachMode mode) => mode == AttachMode.Tcx ? "tcx" : "clsact";

    /// <summary>Attaches (or replaces) the program; call in the device's network namespace.</summary>
    public void Attach(int ifIndex, TcDirection direction, BpfProgram program)
    {
        if (Mode == AttachMode.Tcx)
        {
            _links!.Attach(ifIndex, direction, program);
            RemoveClsactFilter(ifIndex, direction);
        }
        else
        {
            TcAttachment.Attach(ifIndex, direction, program);
            _links?.Detach(ifIndex, direction);
        }
    }

    /// <summary>Detaches whatever Membrane attached there, by either mechanism; call in the device's network namespace.</summary>
    public void Detach(int ifIndex, TcDirection direction)
    {
        _links?.Detach(ifIndex, direction);
        RemoveClsactFilter(ifIndex, direction);
    }

    /// <summary>The id of the program attached by this mode, or null.</summary>
    public uint? Query(int ifIndex, TcDirection direction) =>
        Mode == AttachMode.Tcx ? _links!.Query(ifIndex, direction) : TcAttachment.Query(ifIndex, direction);

    /// <summary>Removes the pins of links whose device is gone (deleted while the agent was away).</summary>
    public int PruneDefunctLinks() => _links?.PruneDefunct() ?? 0;

    private static void RemoveClsactFilter(int ifIndex, TcDirection direction)
    {
        try
        {
            TcAttachment.Detach(ifIndex, direction);
        }
        catch (BpfException)
        {
            // no clsact qdisc on the device: nothing to remove
        }
    }
}
