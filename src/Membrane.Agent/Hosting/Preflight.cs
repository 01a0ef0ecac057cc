using System.Runtime.InteropServices;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;

namespace Membrane.Agent.Hosting;

/// <summary>What the agent needs from the machine, checked before it touches anything, and the datapath load.</summary>
public static partial class Preflight
{
    /// <summary>Root, the tools the sandbox runs, bpffs mounted, a private state directory; then the programs and maps.</summary>
    public static PolicyDatapath Run(AgentOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (GetEuid() != 0)
        {
            throw new InvalidOperationException("the agent must run as root (it creates network namespaces and loads eBPF programs)");
        }
        foreach (var tool in new[] { "ip", "setsid", "nsenter" })
        {
            if (!(Environment.GetEnvironmentVariable("PATH") ?? "").Split(':').Any(d => File.Exists(Path.Combine(d, tool))))
            {
                throw new InvalidOperationException($"'{tool}' was not found: install iproute2 and util-linux (scripts/setup.sh)");
            }
        }
        EnsureBpffs(options.PinDirectory);
        StateStore.EnsurePrivateDirectory(options.StateDirectory);
        try
        {
            var mode = options.AttachMode ?? DeviceHooks.Probe();
            if (mode == AttachMode.Tcx && !TcxLinks.Supported())
            {
                throw new InvalidOperationException($"--attach tcx: this kernel ({Environment.OSVersion.Version}) has no tcx links " +
                    "(6.6+); use --attach clsact or auto");
            }
            var datapath = PolicyDatapath.Load(new LoadOptions
            {
                PinDirectory = options.PinDirectory,
                MaxEntries = new Dictionary<string, uint>(StringComparer.Ordinal) { ["mb_policy"] = options.PolicyMapEntries },
            });
            datapath.Hooks = new DeviceHooks(mode, Path.Combine(options.PinDirectory, "links"));
            datapath.Conntrack.EndpointCapacity = options.ConntrackEntriesPerEndpoint;
            return datapath;
        }
        catch (BpfException e)
        {
            var log = e.VerifierLog is { Length: > 0 } text ? Environment.NewLine + text : "";
            throw new InvalidOperationException($"cannot load the eBPF datapath: {e.Message}{log}", e);
        }
    }

    private static void EnsureBpffs(string pinDirectory)
    {
        var mounts = File.ReadAllText("/proc/mounts");
        if (!mounts.Split('\n').Any(l => l.Split(' ') is [_, "/sys/fs/bpf", "bpf", ..]))
        {
            Ip.Exec("mount", ["-t", "bpf", "bpf", "/sys/fs/bpf"], null);
        }
        Directory.CreateDirectory(pinDirectory);
    }

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEuid();
}
