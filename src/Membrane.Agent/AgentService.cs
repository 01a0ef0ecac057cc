using System.Net;
using Membrane.Agent.Cni;
using Membrane.Agent.Endpoints;
using Membrane.Agent.Hosting;
using Membrane.Agent.Ipam;
using Membrane.Agent.Monitoring;
using Membrane.Agent.Queries;
using Membrane.Agent.Regeneration;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath;
using Membrane.Datapath.Sync;
using Membrane.Kvstore;
using Membrane.Policy.Api;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Resolution;
using Membrane.Policy.Tracing;
using Membrane.Policy.Workloads;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Membrane.Agent;

/// <summary>Bad input: reported to the caller with every error; the agent's state is unchanged.</summary>
public sealed class AgentInputException(string message, IReadOnlyList<PolicyError>? errors = null) : Exception(message)
{
    public IReadOnlyList<PolicyError> Errors { get; } = errors ?? [];

    /// <summary>The node whose agent can answer the request (the pod it names runs there).</summary>
    public string? Node { get; init; }

    /// <summary>A flow as trace and probe requests give it; what is wrong with it is the caller's error.</summary>
    public static TraceRequest Flow(string from, string to, string protocol, int? port, string? icmpType, int? icmpCode, string? family)
    {
        try
        {
            return FlowSpec.Parse(from, to, protocol, port, icmpType, icmpCode, family);
        }
        catch (ArgumentException e)
        {
            throw new AgentInputException(e.Message);
        }
    }
}

/// <summary>
/// The agent's core: composes the object store (desired state), the policy engine, the endpoint manager (through
/// its runtime), the regenerator and the state file, and runs every change through one commit path under one lock
/// (AgentService.Changes.cs). Reads go through <see cref="Queries"/>.
/// </summary>
public sealed partial class AgentService : IDisposable, IPodLookup
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly AgentOptions _options;
    private readonly ILogger _log;
    private readonly IObjectStore _store;
    private readonly StateStore _stateFile;
    private readonly EndpointManager _endpoints;
    private readonly Regenerator _regenerator;
    private readonly CniAttachments? _attachments;
    private readonly ClusterIdentities? _clusterIdentities;
    private PolicyEngine _engine;
    private PodAddressAllocator _ipam;

    private AgentService(AgentOptions options, PolicyDatapath datapath, IEndpointRuntime runtime, IObjectStore store, ILogger log,
        CniAttachments? attachments, ClusterIdentities? clusterIdentities)
    {
        _options = options;
        _attachments = attachments;
        _clusterIdentities = clusterIdentities;
        _log = log;
        Datapath = datapath;
        datapath.SetAuditMode(options.PolicyAuditMode); // the pinned config may hold a previous run's
        PolicyMap = new PolicyMapSynchronizer(datapath.PolicyMap, datapath.Rules);
        _store = store;
        _stateFile = new StateStore(options.StateDirectory);
        _endpoints = new EndpointManager(runtime, datapath, PolicyMap);
        _regenerator = new Regenerator(datapath, PolicyMap, _endpoints);
        (_engine, _ipam) = NewEngine();
        Queries = new AgentQueries(options, datapath, PolicyMap, _endpoints, () => _engine, store);
        Events = new EventHub(datapath, Queries.Describe, options.FlowRingSize > 0 ? new FlowRing(options.FlowRingSize) : null,
            options.FlowsEveryPacket);
        Events.Start();
    }

    public PolicyDatapath Datapath { get; }

    /// <summary>Writes resolved policy into the policy map (safe order, capacity checks); the one writer of that map.</summary>
    public PolicyMapSynchronizer PolicyMap { get; }

    public EventHub Events { get; }

    /// <summary>The API's read-only views; call them under <see cref="ReadAsync{T}"/> (status needs no lock).</summary>
    public AgentQueries Queries { get; }

    public AgentOptions Options => _options;

    /// <summary>An empty engine and the IPAM that gives its pods their addresses.</summary>
    private (PolicyEngine Engine, PodAddressAllocator Ipam) NewEngine()
    {
        PolicyEngine? engine = null;
        engine = new PolicyEngine(_clusterIdentities is { } cluster
            ? new IdentityAllocator
            {
                PodNumbers = labels => ClusterNumber(cluster, labels),
                PodReleased = id => ReleaseClusterNumber(cluster, id),
            }
            : new IdentityAllocator())
        {
            // Pods of other nodes are peers: they have identities and addresses here, and are resolved on their node.
            IsLocal = key => engine!.FindEndpoint(key) is not { } endpoint || IsLocal(endpoint.Pod),
        };
        return (engine, new PodAddressAllocator(_options.PodIPv4Range, _options.PodIPv6Range));
    }

    /// <summary>Cluster numbers obtained before a change took the lock, by canonical labels.</summary>
    private readonly System.Collections.Concurrent.ConcurrentDictionary<string, uint> _numbers = new(StringComparer.Ordinal);

    /// <summary>
    /// Cluster mode: numbers for the local pods of a state are obtained from the store before the change takes the
    /// lock, so no change waits on etcd while holding it; a store that does not answer fails the change here.
    /// </summary>
    private Task PrefetchNumbersAsync(IReadOnlyDictionary<string, string> objects, CancellationToken cancel) =>
        _clusterIdentities is null || _attachments is not null ? Task.CompletedTask
            : PrefetchNumbersAsync(ManifestLoader.LoadText(string.Join("\n---\n", objects.Values), "store").Manifests, null, cancel);

    /// <summary>
    /// Numbers for the pods of <paramref name="set"/> placed on this node (namespaces from the set or
    /// <paramref name="known"/>).
    /// </summary>
    private async Task PrefetchNumbersAsync(ManifestSet set, IReadOnlyDictionary<string, NamespaceManifest>? known,
        CancellationToken cancel)
    {
        if (_clusterIdentities is not { } cluster || _attachments is not null)
        {
            return;
        }
        var namespaces = set.Namespaces.ToDictionary(n => n.Name, StringComparer.Ordinal);
        foreach (var pod in set.Pods.Where(p => p.NodeName == _options.Node))
        {
            var ns = namespaces.GetValueOrDefault(pod.Namespace) ?? known?.GetValueOrDefault(pod.Namespace);
            var labels = Endpoint.DeriveLabels(pod, ns).Canonical;
            if (!_numbers.ContainsKey(labels))
            {
                try
                {
                    _numbers[labels] = await cluster.AcquireAsync(labels, cancel).ConfigureAwait(false);
                }
                catch (Grpc.Core.RpcException e) when (!cancel.IsCancellationRequested)
                {
                    throw new InvalidOperationException($"the cluster store is not reachable to number the identity of {labels} " +
                        $"({e.Status.StatusCode}); nothing was changed, it is tried again", e);
                }
            }
        }
    }

    /// <summary>Cluster mode: a new label set's number comes from the store (the same on every node).</summary>
    private uint ClusterNumber(ClusterIdentities cluster, LabelSet labels)
    {
        if (_numbers.TryGetValue(labels.Canonical, out var known))
        {
            return known;
        }
        try
        {
            // Not obtained before the change (an API or CNI change, or a restart): asked for now.
            return _numbers[labels.Canonical] = cluster.AcquireAsync(labels.Canonical).GetAwaiter().GetResult();
        }
        catch (Grpc.Core.RpcException e)
        {
            throw new InvalidOperationException($"the cluster store is not reachable to number the identity of {labels} " +
                $"({e.Status.StatusCode}); nothing was changed, try again when it is back", e);
        }
    }

    /// <summary>This node no longer uses the number; best effort (a use left behind ends with this node's lease).</summary>
    private void ReleaseClusterNumber(ClusterIdentities cluster, uint id)
    {
        foreach (var known in _numbers.Where(n => n.Value == id).ToList())
        {
            _numbers.TryRemove(known);
        }
        ReleaseInStore(cluster, id);
    }

    private void ReleaseInStore(ClusterIdentities cluster, uint id) => _ = cluster.ReleaseAsync(id).ContinueWith(
        t => Log.ClusterReleaseFailed(_log, id, t.Exception?.GetBaseException().Message ?? ""), CancellationToken.None,
        TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);

    /// <summary>
    /// The pod with addresses: those it asks for or keeps (reserved), else new ones. A running pod keeps its
    /// addresses (they never change while it runs).
    /// </summary>
    private PodManifest WithAddresses(PodManifest pod, IReadOnlyList<IPAddress>? current)
    {
        var addresses = current ?? (pod.Addresses.Count > 0 ? pod.Addresses : _ipam.Allocate());
        foreach (var address in addresses)
        {
            _ipam.Reserve(address);
        }
        return pod with { Addresses = addresses };
    }

    /// <summary>Starts an agent with the sandbox runtime and the local object store (benchmarks host it this way).</summary>
    public static AgentService Start(AgentOptions options, ILoggerFactory? logging = null) =>
        Start(options, new SandboxRuntime(options), new LocalObjectStore(), logging);

    /// <summary>
    /// Starts the agent: checks the machine, adopts pinned maps, persisted objects and running endpoints, then enforces
    /// them. <paramref name="runtime"/> makes endpoints' interfaces; <paramref name="store"/> holds the desired objects.
    /// With <paramref name="attachments"/> the agent serves container runtimes: endpoints are their CNI attachments
    /// (Pod objects only name labels), and DELs queued while it was away are applied before it serves.
    /// </summary>
    public static AgentService Start(AgentOptions options, IEndpointRuntime runtime, IObjectStore store, ILoggerFactory? logging = null,
        CniAttachments? attachments = null, ClusterIdentities? clusterIdentities = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        ArgumentNullException.ThrowIfNull(runtime);
        ArgumentNullException.ThrowIfNull(store);
        var datapath = Preflight.Run(options);
        var log = (logging ?? NullLoggerFactory.Instance).CreateLogger<AgentService>();
        var agent = new AgentService(options, datapath, runtime, store, log, attachments, clusterIdentities);
        try
        {
            agent.Restore();
            agent.ApplyQueuedDeletes();
            return agent;
        }
        catch
        {
            agent.Dispose();
            throw;
        }
    }

    private void Restore()
    {
        _endpoints.Runtime.Prepare();
        PolicyMap.Adopt();
        Datapath.IpCache.Adopt();
        var state = _stateFile.Load(EnforcedEndpoints());
        _store.Restore(new ObjectStoreSnapshot(state.Objects, state.Revision));
        _attachments?.Restore(state.Attachments);
        var pods = (_attachments is null
            ? _store.Objects.Keys.Where(k => k.StartsWith("Pod/", StringComparison.Ordinal)).Select(k => k[4..])
            : _attachments.All.Select(a => a.PodKey)).ToHashSet(StringComparer.Ordinal);
        _endpoints.Adopt(state.Endpoints, pods);
        ForgetVanishedContainers();
        var addresses = state.Endpoints.ToDictionary(e => e.Key, e => (IReadOnlyList<IPAddress>)e.Value.Addresses.Select(IPAddress.Parse)
            .ToList(), StringComparer.Ordinal);
        RebuildEngine(state.Identities.Select(i => (i.Id, LabelSet.Parse(i.Labels))).ToList(), addresses);
        _endpoints.ResumeAdopted(key => _engine.FindEndpoint(key));
        ClaimRestoredIdentities();
        Enforce(_regenerator.Plan(_engine), attachAll: true);
        Save();
        AfterChange();
    }

    /// <summary>What the kernel still enforces for pods (pinned policy and address entries): never dropped silently.</summary>
    private int EnforcedEndpoints() => PolicyMap.Endpoints().Concat(Datapath.Endpoints.IfIndexes().Select(i => (int)i)).Distinct().Count();

    /// <summary>
    /// A new engine holding exactly the store's objects: identities keep their numbers and pods their addresses.
    /// Used at start and to undo a change that failed half-way.
    /// </summary>
    private void RebuildEngine(IReadOnlyList<(uint Id, LabelSet Labels)> identities, Dictionary<string, IReadOnlyList<IPAddress>> addresses)
    {
        var (engine, ipam) = NewEngine();
        (_engine, _ipam) = (engine, ipam);
        foreach (var (id, labels) in identities)
        {
            engine.IdentityAllocator.Restore(id, labels, IdentityKind.Pod);
        }
        var objects = _store.Objects;
        var set = objects.Count == 0 ? ManifestSet.Empty : ManifestLoader.LoadText(string.Join("\n---\n", objects.Values), "state.json")
            .OrThrow();
        foreach (var ns in set.Namespaces)
        {
            engine.UpsertNamespace(ns);
        }
        foreach (var pod in _attachments is null ? set.Pods : [])
        {
            if (IsLocal(pod))
            {
                engine.UpsertPod(WithAddresses(pod, addresses.GetValueOrDefault(pod.Key)));
            }
            else
            {
                engine.UpsertRemotePod(WithRemoteAddresses(pod));
            }
        }
        foreach (var policy in set.Policies)
        {
            engine.UpsertPolicy(policy);
        }
        _engine = engine;
        SyncCniPods();
    }

    /// <summary>A pod this node runs: every pod on one node; in cluster mode those whose <c>spec.nodeName</c> is this node.</summary>
    private bool IsLocal(PodManifest pod) => _options.Node is null || pod.NodeName is null || pod.NodeName == _options.Node;

    /// <summary>
    /// Cluster mode, at start: this node's identities (numbers from its state file) are claimed in the store again
    /// under its new lease, so no collector takes them; a number the store gives otherwise is reported.
    /// </summary>
    private void ClaimRestoredIdentities()
    {
        if (_clusterIdentities is not { } cluster)
        {
            return;
        }
        foreach (var identity in _engine.Identities.Where(i => i.Kind == IdentityKind.Pod).ToList())
        {
            var number = ClusterNumber(cluster, identity.Labels);
            if (number != identity.Id)
            {
                Log.ClusterNumberDiffers(_log, identity.Labels.Canonical, identity.Id, number);
            }
        }
    }

    private List<(uint Id, LabelSet Labels)> PodIdentities() =>
        _engine.Identities.Where(i => i.Kind == IdentityKind.Pod).Select(i => (i.Id, i.Labels)).ToList();

    private Dictionary<string, IReadOnlyList<IPAddress>> PodAddresses() =>
        _engine.Endpoints.Where(e => IsLocal(e.Pod)).ToDictionary(e => e.Key, e => e.Addresses, StringComparer.Ordinal);

    /// <summary>Runs a read under the agent's lock: it sees no change half-made.</summary>
    public async Task<T> ReadAsync<T>(Func<T> query, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            return query();
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>A pod's record and endpoint (call under the lock; benchmarks call it between changes).</summary>
    public (EndpointRecord Record, Endpoint Endpoint)? Pod(string key) =>
        _endpoints.Find(key) is { } r && _engine.FindEndpoint(key) is { } e ? (r, e) : null;

    public Task<(EndpointRecord Record, Endpoint Endpoint)?> FindPodAsync(string key, CancellationToken cancel) =>
        ReadAsync(() => Pod(key), cancel);

    public Task<IReadOnlyList<string>> PodKeysAsync(CancellationToken cancel) =>
        ReadAsync(() => (IReadOnlyList<string>)_endpoints.Records.Keys.Order(StringComparer.Ordinal).ToList(), cancel);

    public Task<Endpoint?> FindPeerAsync(string key, CancellationToken cancel) => ReadAsync(() => _engine.FindEndpoint(key), cancel);

    public Task<IReadOnlyList<string>> PeerKeysAsync(CancellationToken cancel) =>
        ReadAsync(() => (IReadOnlyList<string>)_engine.Endpoints.Select(e => e.Key).Order(StringComparer.Ordinal).ToList(), cancel);

    public void Dispose()
    {
        Events.Dispose();
        Datapath.Dispose();
        _gate.Dispose();
    }
}
