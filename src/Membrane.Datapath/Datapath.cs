using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;

namespace Membrane.Datapath;

/// <summary>
/// The loaded policy datapath: the two tc programs, their shared maps and the synchronisers that fill them.
/// </summary>
public sealed class PolicyDatapath : IDisposable
{
    public const string ObjectName = "membrane.o";
    public const string FromPodProgram = "from_pod";
    public const string ToPodProgram = "to_pod";

    private PolicyDatapath(BpfObject obj)
    {
        Bpf = obj;
        FromPod = obj.Program(FromPodProgram);
        ToPod = obj.Program(ToPodProgram);
        PolicyMap = obj.Map("mb_policy");
        Conntrack = new ConntrackTable(obj.Map("mb_ct4"), obj.Map("mb_ct6"));
        Drops = obj.Map("mb_drops");
        Events = obj.Map("mb_events");
        Config = obj.Map("mb_config");
        Fragments = obj.Map("mb_frag");
        EndpointMap = obj.Map("mb_endpoints");
        Endpoints = new EndpointTable(EndpointMap);
        IpCache4Map = obj.Map("mb_ipcache4");
        IpCache6Map = obj.Map("mb_ipcache6");
        Rules = new RuleRegistry();
        Policy = new PolicyMapSynchronizer(PolicyMap, Rules);
        IpCache = new IpCacheSynchronizer(IpCache4Map, IpCache6Map);
    }

    public BpfObject Bpf { get; }

    /// <summary>Runs on the pod's host-side veth tc ingress: what the pod sends (its egress policy).</summary>
    public BpfProgram FromPod { get; }

    /// <summary>Runs on the pod's host-side veth tc egress: what the pod receives (its ingress policy).</summary>
    public BpfProgram ToPod { get; }

    public BpfMap PolicyMap { get; }

    public ConntrackTable Conntrack { get; }

    public BpfMap Drops { get; }

    public BpfMap Events { get; }

    public BpfMap Config { get; }

    public BpfMap Fragments { get; }

    public BpfMap EndpointMap { get; }

    public BpfMap IpCache4Map { get; }

    public BpfMap IpCache6Map { get; }

    /// <summary>The addresses each endpoint may send from (source validation).</summary>
    public EndpointTable Endpoints { get; }

    public RuleRegistry Rules { get; }

    public PolicyMapSynchronizer Policy { get; }

    public IpCacheSynchronizer IpCache { get; }

    public static PolicyDatapath Load(LoadOptions? options = null) =>
        new(BpfObject.Load(Path.Combine(BpfObject.ObjectDirectory, ObjectName), options));

    /// <summary>Turns event emission on or off (a monitor turns it on while it listens).</summary>
    public void SetEvents(bool drops, bool verdicts) =>
        Config.Update(0u, new DatapathConfig { Flags = (drops ? DatapathConfig.DropEvents : 0) | (verdicts ? DatapathConfig.VerdictEvents : 0) });

    /// <summary>Drop counters by reason, summed over CPUs.</summary>
    public IReadOnlyDictionary<DropReason, Counter> DropCounters()
    {
        var result = new Dictionary<DropReason, Counter>();
        foreach (var reason in Enum.GetValues<DropReason>().Where(r => r != DropReason.Allowed))
        {
            var perCpu = Drops.LookupPerCpu<uint, Counter>((uint)reason);
            result[reason] = new Counter { Packets = (ulong)perCpu.Sum(c => (decimal)c.Packets), Bytes = (ulong)perCpu.Sum(c => (decimal)c.Bytes) };
        }
        return result;
    }

    /// <summary>Empties conntrack and the fragment table: a clean slate for tests and benchmarks.</summary>
    public int FlushConntrack()
    {
        var count = Conntrack.Flush();
        foreach (var key in Fragments.Keys<FragmentKey>())
        {
            Fragments.Delete(key);
        }
        return count;
    }

    public void Dispose() => Bpf.Dispose();
}
