using System.Net;
using System.Runtime.InteropServices;
using Membrane.Agent.Monitoring;
using Membrane.Agent.Probes;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Policy.Api;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Resolution;
using Membrane.Policy.Workloads;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;

namespace Membrane.Agent;

/// <summary>Bad input: reported to the caller with every error; the agent's state is unchanged.</summary>
public sealed class AgentInputException(string message, IReadOnlyList<PolicyError>? errors = null) : Exception(message)
{
    public IReadOnlyList<PolicyError> Errors { get; } = errors ?? [];
}

/// <summary>
/// The agent: owns the policy engine, the sandbox and the datapath of this node. Every operation runs under one
/// lock; a change validates everything first, then changes the sandbox, the maps and the state on disk.
/// </summary>
public sealed partial class AgentService : IDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly AgentOptions _options;
    private readonly NodeNetwork _node;
    private readonly PodNetwork _pods;
    private readonly PodServers _servers;
    private readonly StateStore _store;
    private readonly Dictionary<string, EndpointRecord> _records = new(StringComparer.Ordinal);
    private Dictionary<string, string> _objects = new(StringComparer.Ordinal);
    private readonly HashSet<int> _attached = [];
    private PolicyEngine _engine;
    private long _revision;

    private readonly ILogger _log;

    private AgentService(AgentOptions options, PolicyDatapath datapath, ILogger log)
    {
        _options = options;
        _log = log;
        Datapath = datapath;
        _node = new NodeNetwork(options);
        _pods = new PodNetwork(options, _node);
        _servers = new PodServers(options);
        _store = new StateStore(options.StateDirectory);
        _engine = NewEngine();
        Events = new EventHub(datapath, Describe);
        Prober = new Prober(this);
    }

    public PolicyDatapath Datapath { get; }

    public EventHub Events { get; }

    public Prober Prober { get; }

    public AgentOptions Options => _options;

    public double LastRegenerationMilliseconds { get; private set; }

    private PolicyEngine NewEngine() => new(new PodAddressAllocator(_options.PodIPv4Range, _options.PodIPv6Range));

    /// <summary>Starts the agent: adopts pinned maps, persisted objects and running pods, then enforces them.</summary>
    public static AgentService Start(AgentOptions options, ILoggerFactory? logging = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        if (GetEuid() != 0)
        {
            throw new InvalidOperationException("the agent must run as root (it creates network namespaces and loads eBPF programs)");
        }
        foreach (var tool in new[] { "ip", "setsid" })
        {
            if (!Environment.GetEnvironmentVariable("PATH")!.Split(':').Any(d => File.Exists(Path.Combine(d, tool))))
            {
                throw new InvalidOperationException($"'{tool}' was not found: install iproute2 and util-linux (scripts/setup.sh)");
            }
        }
        EnsureBpffs(options.PinDirectory);
        StateStore.EnsurePrivateDirectory(options.StateDirectory);
        PolicyDatapath datapath;
        try
        {
            datapath = PolicyDatapath.Load(new LoadOptions { PinDirectory = options.PinDirectory });
        }
        catch (BpfException e)
        {
            throw new InvalidOperationException($"cannot load the eBPF datapath: {e.Message}{(e.VerifierLog is { Length: > 0 } log ? Environment.NewLine + log : "")}", e);
        }
        var agent = new AgentService(options, datapath, (logging ?? NullLoggerFactory.Instance).CreateLogger<AgentService>());
        try
        {
            agent.Restore();
            return agent;
        }
        catch
        {
            agent.Dispose();
            throw;
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

    private void Restore()
    {
        _node.Ensure();
        Datapath.Policy.Adopt();
        Datapath.IpCache.Adopt();
        var state = _store.Load(EnforcedEndpoints());
        _revision = state.Revision;
        _objects = new Dictionary<string, string>(state.Objects, StringComparer.Ordinal);
        foreach (var (key, record) in state.Endpoints)
        {
            if (!_objects.ContainsKey($"Pod/{key}"))
            {
                // Deleted, and the agent stopped before it removed the pod's network: finish the job.
                _servers.Stop(key);
                _pods.Delete(record);
            }
            else if (_pods.IsIntact(record))
            {
                _records[key] = record; // adopted: the pod kept running while the agent was away
            }
        }
        _pods.RemoveOrphans(_objects.Keys.Where(k => k.StartsWith("Pod/", StringComparison.Ordinal)).Select(k => k[4..]));
        var addresses = state.Endpoints.ToDictionary(e => e.Key, e => (IReadOnlyList<IPAddress>)e.Value.Addresses.Select(IPAddress.Parse).ToList(), StringComparer.Ordinal);
        RebuildEngine(state.Identities.Select(i => (i.Id, LabelSet.Parse(i.Labels))).ToList(), addresses);
        foreach (var (key, record) in _records)
        {
            if (!_servers.IsRunning(key))
            {
                _servers.Start(_engine.FindEndpoint(key)!.Pod, record.Netns);
            }
        }
        // Entries of endpoints that no longer exist.
        foreach (var ifIndex in Datapath.Policy.Endpoints().Where(i => !_records.Values.Any(r => r.IfIndex == i)).ToList())
        {
            Datapath.Policy.Remove((uint)ifIndex);
        }
        foreach (var ifIndex in Datapath.Endpoints.IfIndexes().Where(i => !_records.Values.Any(r => r.IfIndex == i)).ToList())
        {
            Datapath.Endpoints.Remove(ifIndex);
        }
        Enforce(Plan(), attachAll: true);
        Save();
        Publish();
    }

    /// <summary>What the kernel still enforces for pods (pinned policy and address entries): never dropped silently.</summary>
    private int EnforcedEndpoints() => Datapath.Policy.Endpoints().Concat(Datapath.Endpoints.IfIndexes().Select(i => (int)i)).Distinct().Count();

    /// <summary>
    /// A new engine holding exactly <see cref="_objects"/>: identities keep their numbers and pods their addresses.
    /// Used at start and to undo a change that failed half-way.
    /// </summary>
    private void RebuildEngine(IReadOnlyList<(uint Id, LabelSet Labels)> identities, Dictionary<string, IReadOnlyList<IPAddress>> addresses)
    {
        var engine = NewEngine();
        foreach (var (id, labels) in identities)
        {
            engine.IdentityAllocator.Restore(id, labels, IdentityKind.Pod);
        }
        var set = _objects.Count == 0 ? ManifestSet.Empty : ManifestLoader.LoadText(string.Join("\n---\n", _objects.Values), "state.json").OrThrow();
        foreach (var ns in set.Namespaces)
        {
            engine.UpsertNamespace(ns);
        }
        foreach (var pod in set.Pods)
        {
            engine.UpsertPod(addresses.TryGetValue(pod.Key, out var a) ? pod with { Addresses = a } : pod);
        }
        foreach (var policy in set.Policies)
        {
            engine.UpsertPolicy(policy);
        }
        _engine = engine;
    }

    private List<(uint Id, LabelSet Labels)> PodIdentities() =>
        _engine.Identities.Where(i => i.Kind == IdentityKind.Pod).Select(i => (i.Id, i.Labels)).ToList();

    private Dictionary<string, IReadOnlyList<IPAddress>> PodAddresses() =>
        _engine.Endpoints.ToDictionary(e => e.Key, e => e.Addresses, StringComparer.Ordinal);

    public void Dispose()
    {
        Events.Dispose();
        Datapath.Dispose();
        _gate.Dispose();
    }

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEuid();
}
