using System.Net;
using Membrane.Agent.Hosting;
using Membrane.Agent.Sandbox;
using Membrane.Kvstore;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;

namespace Membrane.Agent.Cluster;

/// <summary>
/// Cluster mode's network: announces this node (underlay address, pod ranges) and publishes its pods' addresses
/// with their identities on its lease; follows the other nodes (routes to their pod prefixes, tunnel maps, their
/// addresses as remote nodes) and their pods' addresses (peers in the engine, the datapath's ipcache); watches the
/// store's health for <c>status</c>. Each part retries on its own: a store outage delays publishing, never enforcement.
/// </summary>
public sealed partial class ClusterNetwork(AgentService agent, EtcdConnection etcd, NodeSession session, ClusterHealth health,
    IOptions<AgentOptions> options, ILogger<ClusterNetwork> log) : BackgroundService
{
    private ClusterSync Sync => agent.Cluster ?? throw new InvalidOperationException("the agent does not run in cluster mode");

    private static readonly TimeSpan RetryDelay = TimeSpan.FromSeconds(1);

    private readonly AgentOptions _options = options.Value;

    /// <summary>The announced nodes and the other nodes' raw ipcache entries, as last seen; validated together.</summary>
    private IReadOnlyDictionary<string, ClusterNode> _nodes = new Dictionary<string, ClusterNode>();

    private IReadOnlyList<RemoteEndpoint>? _entries;

    /// <summary>The identity numbers the store holds (null until first listed); entries must name one.</summary>
    private IReadOnlySet<uint>? _numbers;

    private readonly SemaphoreSlim _endpointsGate = new(1, 1);

    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var address = _options.UnderlayAddress ?? _options.NodeIPv4;
        var ipcache = new ClusterIpCache(etcd, session, _options.Node!, address);
        var underlay = _options.UnderlayAddress is null ? null : new UnderlayNetwork(_options);
        try
        {
            underlay?.Ensure(agent.Datapath);
        }
        catch (InvalidOperationException e)
        {
            health.Problem("underlay", $"the underlay could not be set up: {e.Message}");
            UnderlayFailed(log, e.Message);
            underlay = null;
        }
        // Each part on its own: one that fails is reported and restarted, the others go on.
        await Task.WhenAll(
            Supervise("announcing this node", stop => Retrying("announce", () => ipcache.AnnounceAsync([_options.PodIPv4Range,
                _options.PodIPv6Range], stop), stop), stoppingToken),
            Supervise("following the nodes", stop => FollowNodesAsync(ipcache, underlay, stop), stoppingToken),
            Supervise("following the ipcache", stop => FollowEndpointsAsync(ipcache, stop), stoppingToken),
            Supervise("following the identities", FollowNumbersAsync, stoppingToken),
            Supervise("publishing this node's pods", stop => PublishAsync(ipcache, stop), stoppingToken),
            Supervise("reporting what this node enforces", stop => ReportAsync(session, stop), stoppingToken),
            Supervise("probing the store", stop => health.ProbeAsync(etcd, _options.Node!, stop), stoppingToken)).ConfigureAwait(false);
    }

    private Task Supervise(string part, Func<CancellationToken, Task> loop, CancellationToken stop) =>
        Supervised.RunAsync(part, async cancel =>
        {
            health.Resolved(part);
            await loop(cancel).ConfigureAwait(false);
        }, log, stop, health.Problem);

    private async Task FollowNodesAsync(ClusterIpCache ipcache, UnderlayNetwork? underlay, CancellationToken cancel)
    {
        try
        {
            await foreach (var announced in ipcache.FollowNodesAsync(cancel).ConfigureAwait(false))
            {
                var (view, refused) = ClusterIpCache.ValidateNodes(announced, _options.Node!);
                var reason = refused.Count == 0 ? null : $"{refused.Count} node announcement(s) not believed: {string.Join("; ",
                    refused.Take(5))}";
                if (reason is null)
                {
                    health.Resolved("node entries");
                }
                else if (health.ProblemOf("node entries") != reason)
                {
                    health.Problem("node entries", reason);
                    EntriesRefused(log, reason);
                }
                var others = view.Values.Where(n => n.Name != _options.Node).ToList();
                health.Nodes = view.Values.OrderBy(n => n.Name, StringComparer.Ordinal).ToList();
                _nodes = view;
                try
                {
                    underlay?.Route(others);
                    if (underlay is not null)
                    {
                        agent.Datapath.Tunnels.Sync(others.SelectMany(n => n.PodRanges.Select(r => (r, n.Address))).ToList(),
                            native: _options.RoutingMode == RoutingMode.Native);
                    }
                    var addresses = others.SelectMany(n => new[] { n.Address, UnderlayNetwork.IPv6Of(n.Address) }).ToList();
                    await Sync.ApplyRemoteNodesAsync([.. view.Keys], addresses, cancel).ConfigureAwait(false);
                    health.Resolved("nodes");
                    if (_entries is not null)
                    {
                        await ApplyEndpointsAsync(cancel).ConfigureAwait(false); // which entries to believe depends on the nodes
                    }
                }
                catch (Exception e) when (e is InvalidOperationException or ArgumentException or Datapath.Ebpf.BpfException
                                           or AgentInputException)
                {
                    health.Problem("nodes", $"the other nodes' routes are not installed: {e.Message}");
                    NodesFailed(log, e.Message);
                }
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }
    }

    private async Task FollowEndpointsAsync(ClusterIpCache ipcache, CancellationToken cancel)
    {
        try
        {
            await foreach (var view in ipcache.FollowAsync(cancel).ConfigureAwait(false))
            {
                _entries = view;
                await ApplyEndpointsAsync(cancel).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }
    }

    private async Task FollowNumbersAsync(CancellationToken cancel)
    {
        try
        {
            await foreach (var numbers in ClusterIdentities.FollowNumbersAsync(etcd, cancel).ConfigureAwait(false))
            {
                _numbers = numbers;
                if (_entries is not null)
                {
                    await ApplyEndpointsAsync(cancel).ConfigureAwait(false); // which entries to believe depends on the numbers
                }
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }
    }

    /// <summary>
    /// The other nodes' entries this node believes (see <see cref="ClusterIpCache.Validate"/>) become peers' addresses;
    /// the others are ignored, named in <c>status</c> and logged once per change of the set.
    /// </summary>
    private async Task ApplyEndpointsAsync(CancellationToken cancel)
    {
        await _endpointsGate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var (believed, refused) = ClusterIpCache.Validate(_entries ?? [], _nodes, _numbers);
            health.RemoteEndpoints = believed.Count;
            var reason = refused.Count == 0 ? null : $"{refused.Count} ipcache entr{(refused.Count == 1 ? "y is" : "ies are")} not " +
                $"believed: {string.Join("; ", refused.Take(5))}{(refused.Count > 5 ? "; …" : "")}";
            if (reason is null)
            {
                health.Resolved("ipcache entries");
            }
            else if (health.ProblemOf("ipcache entries") != reason)
            {
                health.Problem("ipcache entries", reason);
                EntriesRefused(log, reason);
            }
            try
            {
                await Sync.ApplyRemoteEndpointsAsync(believed, cancel).ConfigureAwait(false);
                health.Resolved("ipcache");
            }
            catch (Exception e) when (e is InvalidOperationException or AgentInputException or Datapath.Ebpf.BpfException)
            {
                health.Problem("ipcache", $"other nodes' pod addresses are not enforced: {e.Message}");
                EndpointsFailed(log, e.Message);
            }
        }
        finally
        {
            _endpointsGate.Release();
        }
    }

    /// <summary>
    /// Keeps <c>membrane/ipcache/</c> equal to this node's pods: after every change, and again after a failure until
    /// the store takes it (the session rewrites written keys itself when it gets a new lease).
    /// </summary>
    private async Task PublishAsync(ClusterIpCache ipcache, CancellationToken cancel)
    {
        var published = new Dictionary<IPAddress, (uint Identity, string Pod)>();
        var pending = true;
        try
        {
            while (!cancel.IsCancellationRequested)
            {
                if (!pending)
                {
                    await Sync.LocalEndpointsChanged.ReadAsync(cancel).ConfigureAwait(false);
                }
                var wanted = await agent.ReadAsync(Sync.LocalEndpoints, cancel).ConfigureAwait(false);
                try
                {
                    foreach (var gone in published.Keys.Where(a => !wanted.ContainsKey(a)).ToList())
                    {
                        await ipcache.WithdrawAsync(gone, cancel).ConfigureAwait(false);
                        published.Remove(gone);
                    }
                    foreach (var (addressOfPod, entry) in wanted.Where(w => !published.TryGetValue(w.Key, out var p) || p != w.Value))
                    {
                        await ipcache.PublishAsync(addressOfPod, entry.Identity, entry.Pod, cancel).ConfigureAwait(false);
                        published[addressOfPod] = entry;
                    }
                    pending = false;
                    health.Resolved("publish");
                }
                catch (Grpc.Core.RpcException e)
                {
                    pending = true;
                    health.Problem("publish", $"this node's pod addresses are not all published ({e.Status.StatusCode})");
                    await Task.Delay(RetryDelay, cancel).ConfigureAwait(false);
                }
            }
        }
        catch (OperationCanceledException) when (cancel.IsCancellationRequested)
        {
        }
    }

    /// <summary>
    /// Keeps <c>membrane/enforced/NODE</c> equal to what this node enforces (the cluster's <c>apply</c> waits on it):
    /// after every change, and again after a failure until the store takes it.
    /// </summary>
    private async Task ReportAsync(NodeSession node, CancellationToken cancel)
    {
        string? reported = null;
        var pending = true;
        while (!cancel.IsCancellationRequested)
        {
            if (!pending)
            {
                await Sync.EnforcementChanged.ReadAsync(cancel).ConfigureAwait(false);
            }
            if (Sync.Enforcement is not { } state || ClusterEnforcement.Format(state) == reported)
            {
                pending = false;
                continue;
            }
            try
            {
                await ClusterEnforcement.ReportAsync(node, state, cancel).ConfigureAwait(false);
                reported = ClusterEnforcement.Format(state);
                pending = false;
                health.Resolved("report");
            }
            catch (Grpc.Core.RpcException e) when (!cancel.IsCancellationRequested)
            {
                pending = true;
                health.Problem("report", $"what this node enforces is not reported to the cluster ({e.Status.StatusCode})");
                await Task.Delay(RetryDelay, cancel).ConfigureAwait(false);
            }
        }
    }

    private async Task Retrying(string what, Func<Task> write, CancellationToken cancel)
    {
        while (!cancel.IsCancellationRequested)
        {
            try
            {
                await write().ConfigureAwait(false);
                health.Resolved(what);
                return;
            }
            catch (Grpc.Core.RpcException e)
            {
                health.Problem(what, $"this node is not announced to the others ({e.Status.StatusCode})");
                try
                {
                    await Task.Delay(RetryDelay, cancel).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    return;
                }
            }
        }
    }

    [LoggerMessage(EventId = 46, Level = LogLevel.Error, Message = "the underlay could not be set up: {Reason}")]
    private static partial void UnderlayFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 47, Level = LogLevel.Error, Message = "the other nodes' routes are not installed: {Reason}")]
    private static partial void NodesFailed(ILogger logger, string reason);

    [LoggerMessage(EventId = 51, Level = LogLevel.Warning, Message = "{Reason}")]
    private static partial void EntriesRefused(ILogger logger, string reason);

    [LoggerMessage(EventId = 43, Level = LogLevel.Error, Message = "other nodes' pod addresses are not enforced: {Reason}")]
    private static partial void EndpointsFailed(ILogger logger, string reason);
}
