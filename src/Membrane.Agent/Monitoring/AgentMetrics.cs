using Membrane.Datapath;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;
using Membrane.Policy.Rules;
using Prometheus;
using Counter = Prometheus.Counter;

namespace Membrane.Agent.Monitoring;

/// <summary>
/// The agent's Prometheus metrics, named after the reference system's where it has them (<c>membrane_</c> for
/// <c>cilium_</c>). Datapath figures come from the kernel's own counters at each scrape (drops by reason and
/// direction, packets let through, policy verdicts from the policy map's per-entry counters, lost events, conntrack
/// entries, map pressure); the agent's from its published status and its own instruments. Served by
/// prometheus-net's stand-alone Kestrel server on <c>--metrics-address</c>, apart from the API socket.
/// </summary>
public sealed class AgentMetrics
{
    private static readonly string[] DirectionLabels = ["INGRESS", "EGRESS"];

    /// <summary>How long one regeneration (endpoints, maps, programs, conntrack) took.</summary>
    public static readonly Histogram RegenerationSeconds = Metrics.CreateHistogram("membrane_endpoint_regeneration_time_stats_seconds",
        "Time a regeneration of endpoints took, from resolved policy to enforced kernel state",
        new HistogramConfiguration
        {
            LabelNames = ["status"],
            Buckets = Histogram.ExponentialBuckets(0.0005, 2, 16),
        });

    /// <summary>Policy imports refused (invalid, conflicting, or not fitting the maps).</summary>
    public static readonly Counter PolicyImportErrors = Metrics.CreateCounter("membrane_policy_import_errors_total",
        "Policy imports that were refused");

    /// <summary>Background loops restarted after a failure, by part.</summary>
    public static readonly Counter LoopRestarts = Metrics.CreateCounter("membrane_agent_loop_restarts_total",
        "Background loops of the agent restarted after an unexpected failure", "part");

    /// <summary>Parts of the agent that are behind (1) with the reason in status; cluster mode.</summary>
    public static readonly Gauge Degraded = Metrics.CreateGauge("membrane_agent_degraded",
        "1 while a part of the agent is behind (status names the reason): objects, ipcache, nodes, publish, store, ...", "part");

    private readonly Counter _drops = Metrics.CreateCounter("membrane_drop_count_total", "Packets dropped, by reason and direction",
        "reason", "direction");

    private readonly Counter _dropBytes = Metrics.CreateCounter("membrane_drop_bytes_total", "Bytes dropped, by reason and direction",
        "reason", "direction");

    private readonly Counter _forwarded = Metrics.CreateCounter("membrane_forward_count_total",
        "Packets the policy programs let through, by direction", "direction");

    private readonly Counter _forwardedBytes = Metrics.CreateCounter("membrane_forward_bytes_total",
        "Bytes the policy programs let through, by direction", "direction");

    private readonly Counter _verdicts = Metrics.CreateCounter("membrane_policy_verdict_total",
        "Policy decisions on new connections, by direction, match kind and action (allow entries count connections admitted, " +
        "deny entries and the default deny count packets dropped, audit counts packets audit mode let through that policy would " +
        "have dropped)", "direction", "match", "action");

    private readonly Counter _eventsLost = Metrics.CreateCounter("membrane_ringbuffer_events_lost_total",
        "Datapath events the ring buffer had no room for");

    private readonly Gauge _endpoints = Metrics.CreateGauge("membrane_endpoint_state", "Endpoints by state", "endpoint_state");

    private readonly Gauge _identities = Metrics.CreateGauge("membrane_identity", "Identities in use, by kind", "type");

    private readonly Gauge _policies = Metrics.CreateGauge("membrane_policy", "Policies loaded");

    private readonly Gauge _pressure = Metrics.CreateGauge("membrane_bpf_map_pressure",
        "Fill ratio of each BPF map (entries / capacity); a change that would overflow a map is refused", "map_name");

    private readonly Gauge _conntrack = Metrics.CreateGauge("membrane_datapath_conntrack_entries", "Conntrack entries by family",
        "family");

    private readonly Gauge _conntrackEndpoint = Metrics.CreateGauge("membrane_datapath_conntrack_endpoint_entries",
        "Conntrack entries of each endpoint's own table, by family (each table evicts only its endpoint's connections)", "endpoint",
        "family");

    private readonly Gauge _conntrackEndpointMemory = Metrics.CreateGauge("membrane_datapath_endpoint_state_bytes",
        "Kernel memory of each endpoint's conntrack tables and fragment table (preallocated at their full size)", "endpoint");

    private readonly Gauge _conntrackEndpointCapacity = Metrics.CreateGauge("membrane_datapath_conntrack_endpoint_capacity",
        "Entries each endpoint's conntrack table of a family holds at most");

    private readonly Gauge _revision = Metrics.CreateGauge("membrane_kvstore_enforced_revision",
        "Cluster mode: the store revision this node enforces");

    private readonly Gauge _clusterHealthy = Metrics.CreateGauge("membrane_cluster_healthy",
        "Cluster mode: 1 when the store answers with a quorum and nothing is behind, else 0");

    private readonly Gauge _remoteEndpoints = Metrics.CreateGauge("membrane_cluster_remote_endpoint_addresses",
        "Cluster mode: other nodes' pod addresses this node holds");

    private readonly AgentService _agent;

    public AgentMetrics(AgentService agent)
    {
        ArgumentNullException.ThrowIfNull(agent);
        _agent = agent;
        Metrics.DefaultRegistry.AddBeforeCollectCallback(Collect);
    }

    private void Collect()
    {
        var datapath = _agent.Datapath;
        foreach (var ((reason, direction), counter) in datapath.DropCountersByDirection())
        {
            var labels = new[] { DropReasons.Describe(reason), DirectionLabels[(int)direction] };
            _drops.WithLabels(labels).IncTo(counter.Packets);
            _dropBytes.WithLabels(labels).IncTo(counter.Bytes);
            if (reason == DropReason.Policy)
            {
                _verdicts.WithLabels(DirectionLabels[(int)direction], "none", "deny").IncTo(counter.Packets);
            }
        }
        foreach (var ((direction, kind), counter) in datapath.AuditCounters()) // from zero, so increase() sees the first ones
        {
            _verdicts.WithLabels(DirectionLabels[(int)direction], kind.ToString().ToLowerInvariant(), "audit").IncTo(counter.Packets);
        }
        var (ingress, egress) = datapath.Forwarded();
        _forwarded.WithLabels("INGRESS").IncTo(ingress.Packets);
        _forwarded.WithLabels("EGRESS").IncTo(egress.Packets);
        _forwardedBytes.WithLabels("INGRESS").IncTo(ingress.Bytes);
        _forwardedBytes.WithLabels("EGRESS").IncTo(egress.Bytes);
        _eventsLost.IncTo(datapath.EventsLost());
        foreach (var verdict in datapath.PolicyMap.Entries().GroupBy(e => (e.Key.Direction, e.Value.Kind, e.Value.Deny)))
        {
            var direction = PolicyMapSynchronizer.FromWire((WireDirection)verdict.Key.Direction) == TrafficDirection.Ingress
                ? "INGRESS" : "EGRESS";
            var match = ((WireMatchKind)verdict.Key.Kind).ToString().ToLowerInvariant();
            _verdicts.WithLabels(direction, match, verdict.Key.Deny == 1 ? "deny" : "allow")
                .IncTo(verdict.Aggregate(0UL, (sum, e) => sum + e.Value.Packets));
        }
        var usage = datapath.Conntrack.Usage();
        _conntrack.WithLabels("ipv4").Set(usage.Sum(u => u.IPv4));
        _conntrack.WithLabels("ipv6").Set(usage.Sum(u => u.IPv6));
        var names = _agent.Queries.EndpointNames;
        foreach (var gauge in new[] { _conntrackEndpoint, _conntrackEndpointMemory })
        {
            foreach (var labels in gauge.GetAllLabelValues().Where(l => !names.Values.Contains(l[0])).ToList())
            {
                gauge.RemoveLabelled(labels); // a deleted endpoint's series ends with it
            }
        }
        foreach (var u in usage.Where(u => names.ContainsKey(u.IfIndex)))
        {
            _conntrackEndpoint.WithLabels(names[u.IfIndex], "ipv4").Set(u.IPv4);
            _conntrackEndpoint.WithLabels(names[u.IfIndex], "ipv6").Set(u.IPv6);
            _conntrackEndpointMemory.WithLabels(names[u.IfIndex]).Set(u.MemoryBytes);
        }
        _conntrackEndpointCapacity.Set(datapath.Conntrack.EndpointCapacity);

        var status = _agent.Queries.TryStatus();
        if (status is null)
        {
            return; // still starting
        }
        _endpoints.WithLabels("ready").Set(status.Endpoints);
        foreach (var (kind, count) in _agent.Queries.IdentityKinds)
        {
            _identities.WithLabels(kind).Set(count);
        }
        _policies.Set(status.Policies);
        foreach (var map in status.Maps ?? [])
        {
            _pressure.WithLabels(map.Name).Set((double)map.Entries / map.MaxEntries);
        }
        // The fullest endpoint's table: conntrack has no shared capacity to press on.
        _pressure.WithLabels("mb_ct4").Set(usage.Select(u => u.Capacity == 0 ? 0 : (double)u.IPv4 / u.Capacity).DefaultIfEmpty().Max());
        _pressure.WithLabels("mb_ct6").Set(usage.Select(u => u.Capacity == 0 ? 0 : (double)u.IPv6 / u.Capacity).DefaultIfEmpty().Max());
        if (status.Cluster is { } cluster)
        {
            _revision.Set(cluster.EnforcedRevision);
            _clusterHealthy.Set(cluster.Health == "ok" ? 1 : 0);
            _remoteEndpoints.Set(cluster.RemoteEndpoints);
        }
    }
}
