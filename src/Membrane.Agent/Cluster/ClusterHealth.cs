using System.Collections.Concurrent;
using System.Globalization;
using Etcdserverpb;
using Membrane.Api;
using Membrane.Kvstore;

namespace Membrane.Agent.Cluster;

/// <summary>
/// What <c>status</c> says about the cluster: whether the store answers with a quorum (probed every second), which
/// parts of the exchange with other nodes are behind and why, the nodes this one knows. Thread-safe.
/// </summary>
public sealed class ClusterHealth(AgentOptions options)
{
    private static readonly TimeSpan ProbeInterval = TimeSpan.FromSeconds(1);
    private readonly ConcurrentDictionary<string, string> _problems = new(StringComparer.Ordinal);
    private volatile string? _store = "not probed yet";
    private DateTime _storeSince = DateTime.UtcNow;

    public IReadOnlyList<ClusterNode> Nodes { get; set; } = [];

    public int RemoteEndpoints { get; set; }

    public void Problem(string part, string reason)
    {
        _problems[part] = reason;
        Monitoring.AgentMetrics.Degraded.WithLabels(part).Set(1);
    }

    public void Resolved(string part)
    {
        _problems.TryRemove(part, out _);
        Monitoring.AgentMetrics.Degraded.WithLabels(part).Set(0);
    }

    /// <summary>The reason a part is behind, if it is.</summary>
    public string? ProblemOf(string part) => _problems.GetValueOrDefault(part);

    /// <summary>Reads this node's key linearizably (the store must have a quorum to answer) every second.</summary>
    public async Task ProbeAsync(EtcdConnection etcd, string node, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(etcd);
        var key = EtcdConnection.Bytes(ClusterIpCache.NodesPrefix + node);
        while (!cancel.IsCancellationRequested)
        {
            string? problem;
            try
            {
                await etcd.Client.GetAsync(new RangeRequest { Key = key }, deadline: DateTime.UtcNow.AddSeconds(1.5),
                    cancellationToken: cancel)
                    .ConfigureAwait(false);
                problem = null;
            }
            catch (Exception e) when (EtcdConnection.CancelledBy(e, cancel))
            {
                return;
            }
            catch (Grpc.Core.RpcException e) when (!cancel.IsCancellationRequested)
            {
                problem = $"the cluster store does not answer with a quorum ({e.Status.StatusCode})";
            }
            if (problem != _store)
            {
                Monitoring.AgentMetrics.Degraded.WithLabels("store").Set(problem is null ? 0 : 1);
                _store = problem;
                _storeSince = DateTime.UtcNow;
            }
            try
            {
                await Task.Delay(ProbeInterval, cancel).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
        }
    }

    /// <summary>The cluster part of <c>status</c>, with what this node enforces.</summary>
    public ClusterStatusOutput Status(NodeEnforcement? enforcement)
    {
        var reasons = new List<string>();
        if (_store is { } store)
        {
            reasons.Add($"{store} since {_storeSince.ToString("HH:mm:ss", CultureInfo.InvariantCulture)} UTC; every node keeps " +
                "enforcing its last state, and changes that need the store fail until it is back");
        }
        reasons.AddRange(_problems.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => p.Value));
        var health = reasons.Count == 0 ? "ok" : "degraded";
        return new ClusterStatusOutput(options.Node!, options.RoutingMode.ToString().ToLowerInvariant(), health,
            reasons, enforcement?.Enforced ?? 0, options.UnderlayAddress?.ToString(),
            [.. Nodes.Select(n => new NodeOutput(n.Name, n.Address.ToString(), n.PodRanges.Select(r => r.ToString()).ToList()))],
            RemoteEndpoints, enforcement?.Seen ?? 0, enforcement?.Lacks ?? []);
    }
}
