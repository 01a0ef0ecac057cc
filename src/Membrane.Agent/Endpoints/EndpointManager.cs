using System.Net;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Sync;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Endpoints;

/// <summary>
/// The endpoints this node has: one record per pod whose interface exists, made and removed through the runtime, and
/// their presence in the datapath (address map entry, programs attached). Not thread-safe: the agent's lock serialises it.
/// </summary>
public sealed class EndpointManager(IEndpointRuntime runtime, PolicyDatapath datapath, PolicyMapSynchronizer policyMap)
{
    private readonly Dictionary<string, EndpointRecord> _records = new(StringComparer.Ordinal);
    private readonly HashSet<int> _attached = [];

    public IEndpointRuntime Runtime => runtime;

    public IReadOnlyDictionary<string, EndpointRecord> Records => _records;

    public EndpointRecord? Find(string key) => _records.GetValueOrDefault(key);

    /// <summary>The pod whose interface has this index, if any.</summary>
    public string? KeyOf(uint ifIndex) => _records.Values.FirstOrDefault(r => r.IfIndex == ifIndex)?.Key;

    /// <summary>
    /// After a restart: endpoints recorded in the state file are adopted when their pod is still wanted and their
    /// interface is intact; those of pods deleted while the agent was away are removed, as is anything the runtime
    /// left without a record.
    /// </summary>
    public void Adopt(IReadOnlyDictionary<string, EndpointRecord> recorded, IReadOnlySet<string> wanted)
    {
        ArgumentNullException.ThrowIfNull(recorded);
        ArgumentNullException.ThrowIfNull(wanted);
        foreach (var (key, record) in recorded)
        {
            if (!wanted.Contains(key))
            {
                runtime.Delete(key, record); // deleted, and the agent stopped before it removed the pod's network
            }
            else if (runtime.IsIntact(record))
            {
                _records[key] = record; // the pod kept running while the agent was away
            }
        }
        runtime.RemoveOrphans(wanted);
    }

    /// <summary>Whatever runs beside adopted endpoints runs again; datapath entries of interfaces no endpoint has go.</summary>
    public void ResumeAdopted(Func<string, Endpoint?> endpoints)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        foreach (var (key, record) in _records)
        {
            runtime.Adopt(endpoints(key) ?? throw new InvalidOperationException($"adopted endpoint {key} has no pod"), record);
        }
        var known = _records.Values.Select(r => r.IfIndex).ToHashSet();
        foreach (var ifIndex in policyMap.Endpoints().Where(i => !known.Contains(i)).ToList())
        {
            policyMap.Remove((uint)ifIndex);
        }
        foreach (var ifIndex in datapath.LocalDelivery.IfIndexes().Where(i => !known.Contains((int)i)).ToList())
        {
            datapath.LocalDelivery.Remove(ifIndex);
        }
        datapath.AdvanceGeneration();
        foreach (var ifIndex in datapath.Endpoints.IfIndexes().Where(i => !known.Contains((int)i)).ToList())
        {
            datapath.Endpoints.Remove(ifIndex);
        }
        foreach (var ifIndex in datapath.Conntrack.Endpoints().Where(i => !known.Contains((int)i)).ToList())
        {
            datapath.Conntrack.RemoveEndpoint(ifIndex); // tables of endpoints removed while the agent was away
        }
        datapath.Hooks.PruneDefunctLinks(); // links of devices removed while the agent was away
    }

    /// <summary>
    /// Brings the endpoints in line with <paramref name="wanted"/>: those no longer wanted are removed (interface,
    /// address entry, policy entries), missing ones created. True when any was created (its record needs saving).
    /// </summary>
    public bool Reconcile(IEnumerable<Endpoint> wanted)
    {
        var byKey = wanted.ToDictionary(e => e.Key, StringComparer.Ordinal);
        foreach (var key in _records.Keys.Where(k => !byKey.ContainsKey(k)).ToList())
        {
            Remove(key);
        }
        var created = false;
        foreach (var endpoint in byKey.Values.Where(e => !_records.ContainsKey(e.Key)))
        {
            var record = runtime.Create(endpoint);
            if (_records.Values.FirstOrDefault(r => r.IfIndex == record.IfIndex) is { } taken)
            {
                // Chained onto an interface that is already an endpoint's: one set of programs and policy per interface.
                runtime.Delete(endpoint.Key, record);
                throw new AgentInputException($"{record.HostInterface} is already the host end of pod {taken.Key}: two endpoints " +
                    "cannot share an interface");
            }
            _records[endpoint.Key] = record;
            created = true;
        }
        return created;
    }

    private void Remove(string key)
    {
        if (_records.Remove(key, out var record))
        {
            // No more deliveries from other pods' hooks first: its index may be reused by the next interface made.
            datapath.LocalDelivery.Remove((uint)record.IfIndex);
            datapath.AdvanceGeneration();
            runtime.Delete(key, record);
            // The interface first, so the pod is never unfiltered; then the programs (a chained CNI interface stays, and
            // a tcx link's pin would outlive its device).
            NetworkNamespace.Run(runtime.NodeNamespace, () =>
            {
                datapath.Hooks.Detach(record.IfIndex, TcDirection.Ingress);
                datapath.Hooks.Detach(record.IfIndex, TcDirection.Egress);
            });
            _attached.Remove(record.IfIndex);
            policyMap.Remove((uint)record.IfIndex);
            datapath.Endpoints.Remove((uint)record.IfIndex);
        }
    }

    /// <summary>Turns the endpoint's policy audit mode on or off, in its record and in the kernel at once.</summary>
    public EndpointRecord SetPolicyAudit(string key, bool enabled)
    {
        var record = _records[key] with { PolicyAudit = enabled };
        datapath.Endpoints.Set((uint)record.IfIndex, record.Addresses.Select(IPAddress.Parse), enabled);
        _records[key] = record;
        return record;
    }

    /// <summary>
    /// Attaches the programs to endpoints that lack them (or to all, after a restart). The addresses an endpoint may
    /// send from go into the address map first: without them it may send nothing.
    /// </summary>
    public void Attach(bool all)
    {
        var pending = _records.Values.Where(r => all || !_attached.Contains(r.IfIndex)).ToList();
        if (pending.Count == 0)
        {
            return;
        }
        foreach (var record in pending)
        {
            datapath.Endpoints.Set((uint)record.IfIndex, record.Addresses.Select(IPAddress.Parse), record.PolicyAudit);
        }
        NetworkNamespace.Run(runtime.NodeNamespace, () =>
        {
            foreach (var record in pending)
            {
                datapath.Hooks.Attach(record.IfIndex, TcDirection.Ingress, datapath.FromPod);
                datapath.Hooks.Attach(record.IfIndex, TcDirection.Egress, datapath.ToPod);
            }
        });
        _attached.UnionWith(pending.Select(r => r.IfIndex));
        // Deliverable from other pods' hooks only now that the endpoint's own programs and policy are in place.
        foreach (var record in pending)
        {
            if (runtime.Delivery(record) is { } macs)
            {
                datapath.LocalDelivery.Set((uint)record.IfIndex, record.Addresses.Select(IPAddress.Parse), macs);
            }
        }
        datapath.AdvanceGeneration();
    }
}
