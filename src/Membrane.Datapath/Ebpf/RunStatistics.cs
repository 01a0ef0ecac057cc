using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>
/// The kernel's run statistics for every program (BPF_ENABLE_STATS), on while the returned handle is open and off
/// again when the last one closes (or the process ends): each run then costs two clock reads, so they are for
/// measurements, never left on. <see cref="BpfProgram.RunTotals"/> reads what was counted.
/// </summary>
public static class RunStatistics
{
    public static IDisposable Enable()
    {
        var fd = LibBpf.EnableStats(LibBpf.StatsRunTime);
        BpfException.Check(fd, "enabling the kernel's run statistics of BPF programs");
        return new SafeBpfFdHandle(fd);
    }
}
