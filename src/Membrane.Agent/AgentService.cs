using System.Net;
using Membrane.Agent.Changes;
using Membrane.Agent.Cluster;
using Membrane.Agent.Cni;
using Membrane.Agent.Endpoints;
using Membrane.Agent.Hosting;
using Membrane.Agent.Monitoring;
using Membrane.Agent.Objects;
using Membrane.Agent.Queries;
using Membrane.Agent.Regeneration;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath;
using Membrane.Datapath.Sync;
using Membrane.Kvstore;
using Membrane.Policy.Api;
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

    /// <summary>A probe's one-way message must be watched for on this node (its destination pod runs there).</summary>
    public string? WatchOn { get; init; }

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
/// The agent's composition root: builds the desired state (<see cref="DesiredState"/> with the node's
/// <see cref="IPodSource"/>), the kernel enforcer, the one change path (<see cref="ChangeCoordinator"/>) and the
/// feature units that use it (API objects, dry run, endpoint settings, CNI, cluster sync), and restores what a previous
/// run enforced at start. Reads go through <see cref="Queries"/>.
/// </summary>
public sealed class AgentService : IDisposable, IPodLookup
{
    private readonly StateStore _stateFile;
    private readonly EndpointManager _endpoints;
    private readonly ChangeCoordinator _coordinator;
    private readonly ClusterNumbers? _numbers;

    private AgentService(AgentOptions options, PolicyDatapath datapath, IEndpointRuntime runtime, IObjectStore store, ILogger log,
        CniAttachments? attachments, ClusterIdentities? clusterIdentities)
    {
        Options = options;
        Datapath = datapath;
        datapath.SetAuditMode(options.PolicyAuditMode); // the pinned config may hold a previous run's
        datapath.SetHostRouting(options.HostRouting == HostRouting.Bpf);
        PolicyMap = new PolicyMapSynchronizer(datapath.PolicyMap, datapath.Rules);
        _stateFile = new StateStore(options.StateDirectory);
        _endpoints = new EndpointManager(runtime, datapath, PolicyMap);
        var regenerator = new Regenerator(datapath, PolicyMap, _endpoints);
        _numbers = clusterIdentities is null ? null : new ClusterNumbers(clusterIdentities, options.Node, log);
        IPodSource pods = attachments is not null ? new AttachedPods(attachments)
            : options.Node is { } node ? new ClusterPods(options, node) : new SandboxPods(options);
        State = new DesiredState(options, store, pods, attachments, _numbers);
        Queries = new AgentQueries(options, datapath, PolicyMap, _endpoints, () => State.Engine, store);
        var enforcer = new KernelEnforcer(_endpoints, regenerator, took => Queries.LastRegenerationMilliseconds = took.TotalMilliseconds);
        _coordinator = new ChangeCoordinator(State, enforcer, _stateFile, options.Etcd is null ? null : options.Node, log);
        _coordinator.Observe(Queries);
        Events = new EventHub(datapath, Queries.Describe, options.FlowRingSize > 0 ? new FlowRing(options.FlowRingSize) : null,
            options.FlowsEveryPacket);
        Objects = new ObjectChanges(_coordinator, _numbers);
        DryRun = new PolicyDryRun(_coordinator, datapath, Events);
        EndpointSettings = new EndpointSettings(_coordinator, _endpoints, Queries, regenerator, datapath, log);
        Cni = pods is AttachedPods attached ? new CniRequests(_coordinator, attached, options, runtime,
            ifIndex => CniRuntime.ProgramsAttached(datapath.Hooks, ifIndex), log) : null;
        if (_numbers is not null && options.Node is { } name)
        {
            Cluster = new ClusterSync(_coordinator, _numbers, name);
            _coordinator.Observe(Cluster);
        }
        Events.Start();
    }

    public AgentOptions Options { get; }

    public PolicyDatapath Datapath { get; }

    /// <summary>Writes resolved policy into the policy map (safe order, capacity checks); the one writer of that map.</summary>
    public PolicyMapSynchronizer PolicyMap { get; }

    public EventHub Events { get; }

    /// <summary>The API's read-only views; call them under <see cref="ReadAsync{T}"/> (status needs no lock).</summary>
    public AgentQueries Queries { get; }

    /// <summary>The desired state; read it under <see cref="ReadAsync{T}"/>.</summary>
    public DesiredState State { get; }

    /// <summary>The API's object changes: apply, delete, policy import and delete, reset.</summary>
    public ObjectChanges Objects { get; }

    public PolicyDryRun DryRun { get; }

    public EndpointSettings EndpointSettings { get; }

    /// <summary>Container runtimes' requests (<c>--runtime cni</c>), else null.</summary>
    public CniRequests? Cni { get; }

    /// <summary>Cluster mode's exchange with the store and the other nodes, else null.</summary>
    public ClusterSync? Cluster { get; }

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
        foreach (var change in datapath.Bpf.PinChanges)
        {
            Log.PinChanged(log, change);
        }
        var agent = new AgentService(options, datapath, runtime, store, log, attachments, clusterIdentities);
        try
        {
            agent.Restore();
            agent.Cni?.ApplyQueuedDeletes();
            return agent;
        }
        catch
        {
            agent.Dispose();
            throw;
        }
    }

    /// <summary>Adopts what a previous run left (pins, endpoints, the state file) and enforces it.</summary>
    private void Restore()
    {
        _endpoints.Runtime.Prepare();
        PolicyMap.Adopt();
        Datapath.IpCache.Adopt();
        var state = _stateFile.Load(EnforcedEndpoints());
        State.Store.Restore(new ObjectStoreSnapshot(state.Objects, state.Revision));
        State.Attachments?.Restore(state.Attachments);
        var pods = (State.Attachments is null
            ? State.Store.Objects.Keys.Where(k => k.StartsWith("Pod/", StringComparison.Ordinal)).Select(k => k[4..])
            : State.Attachments.All.Select(a => a.PodKey)).ToHashSet(StringComparer.Ordinal);
        _endpoints.Adopt(state.Endpoints, pods);
        Cni?.ForgetVanishedContainers();
        var addresses = state.Endpoints.ToDictionary(e => e.Key, e => (IReadOnlyList<IPAddress>)e.Value.Addresses.Select(IPAddress.Parse)
            .ToList(), StringComparer.Ordinal);
        State.Rebuild(state.Identities.Select(i => (i.Id, LabelSet.Parse(i.Labels))).ToList(), addresses);
        _endpoints.ResumeAdopted(key => State.Engine.FindEndpoint(key));
        _numbers?.Claim(State.Engine.Identities);
        _coordinator.StartAsync().GetAwaiter().GetResult();
    }

    /// <summary>What the kernel still enforces for pods (pinned policy and address entries): never dropped silently.</summary>
    private int EnforcedEndpoints() => PolicyMap.Endpoints().Concat(Datapath.Endpoints.IfIndexes().Select(i => (int)i)).Distinct().Count();

    /// <summary>Runs a read under the agent's lock: it sees no change half-made.</summary>
    public Task<T> ReadAsync<T>(Func<T> query, CancellationToken cancel = default) => _coordinator.ExclusiveAsync(query, cancel);

    /// <summary>A pod's record and endpoint (call under the lock; benchmarks call it between changes).</summary>
    public (EndpointRecord Record, Endpoint Endpoint)? Pod(string key) =>
        _endpoints.Find(key) is { } r && State.Engine.FindEndpoint(key) is { } e ? (r, e) : null;

    public Task<(EndpointRecord Record, Endpoint Endpoint)?> FindPodAsync(string key, CancellationToken cancel) =>
        ReadAsync(() => Pod(key), cancel);

    public Task<IReadOnlyList<string>> PodKeysAsync(CancellationToken cancel) =>
        ReadAsync(() => (IReadOnlyList<string>)_endpoints.Records.Keys.Order(StringComparer.Ordinal).ToList(), cancel);

    public Task<Endpoint?> FindPeerAsync(string key, CancellationToken cancel) => ReadAsync(() => State.Engine.FindEndpoint(key), cancel);

    public Task<IReadOnlyList<string>> PeerKeysAsync(CancellationToken cancel) =>
        ReadAsync(() => (IReadOnlyList<string>)State.Engine.Endpoints.Select(e => e.Key).Order(StringComparer.Ordinal).ToList(), cancel);

    public void Dispose()
    {
        Events.Dispose();
        Datapath.Dispose();
        _coordinator.Dispose();
    }
}
