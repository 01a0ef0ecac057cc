using System.Net;
using System.Net.Sockets;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;
using Membrane.Policy.Resolution;

namespace Membrane.Datapath.Tests;

/// <summary>
/// A privately loaded datapath (no pinning, its own maps) and a policy engine. Under BPF_PROG_TEST_RUN the
/// packet's device is loopback (ifindex 1), so the endpoint under test is written at ifindex 1.
/// </summary>
internal sealed class DatapathHarness : IDisposable
{
    public const uint TestIfIndex = 1;

    public DatapathHarness()
    {
        Policy = new PolicyMapSynchronizer(Datapath.PolicyMap, Datapath.Rules);
    }

    public PolicyDatapath Datapath { get; } = PolicyDatapath.Load();

    /// <summary>The policy map's writer, as the agent has it.</summary>
    public PolicyMapSynchronizer Policy { get; }

    public PolicyEngine Engine { get; private set; } = new();

    public void Dispose() => Datapath.Dispose();

    /// <summary>Loads the test cluster with these policies and makes <paramref name="endpoint"/> the one under test.</summary>
    public void Use(string policies, string endpoint, string workloads = Cluster.Workloads)
    {
        Engine = Cluster.With(policies, workloads).Engine;
        Select(endpoint);
    }

    public void Select(string endpoint)
    {
        Datapath.FlushConntrack();
        Datapath.IpCache.Sync(Engine.IpCache());
        Policy.Sync(TestIfIndex, Engine.Resolve(endpoint).State);
        Datapath.Endpoints.Set(TestIfIndex, Engine.FindEndpoint(endpoint)!.Addresses);
    }

    public IPAddress V4(string pod) => Engine.FindEndpoint(pod)!.Address(AddressFamily.InterNetwork)!;

    public IPAddress V6(string pod) => Engine.FindEndpoint(pod)!.Address(AddressFamily.InterNetworkV6)!;

    /// <summary>The events the programs put in the ring buffer since the last call.</summary>
    public List<DatapathEvent> Events()
    {
        var events = new List<DatapathEvent>();
        using var reader = new RingBufferReader(Datapath.Events, record => events.Add(DatapathEvent.Read(record)));
        reader.Poll(100);
        return events;
    }

    /// <summary>True when the endpoint may send the frame (from_pod program).</summary>
    public bool Sends(byte[] frame) => Run(Datapath.FromPod, frame);

    /// <summary>True when the endpoint may receive the frame (to_pod program).</summary>
    public bool Receives(byte[] frame) => Run(Datapath.ToPod, frame);

    private static bool Run(BpfProgram program, byte[] frame)
    {
        var result = program.TestRun(frame).ReturnValue;
        Assert.True(result is BpfProgram.TcActOk or BpfProgram.TcActShot, $"unexpected tc verdict {result}");
        return result == BpfProgram.TcActOk;
    }
}
