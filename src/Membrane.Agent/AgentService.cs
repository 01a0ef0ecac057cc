using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using Membrane.Agent.Api;
using Membrane.Agent.Monitoring;
using Membrane.Agent.Probes;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;
using Membrane.Policy.Api;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;
using Membrane.Policy.Workloads;

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

    private AgentService(AgentOptions options, PolicyDatapath datapath)
    {
        _options = options;
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
    public static AgentService Start(AgentOptions options)
    {
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
        var agent = new AgentService(options, datapath);
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

    // ---- changes: one path for all of them ----

    /// <summary>What a change was before it began, to put everything back if it fails.</summary>
    private sealed record Snapshot(Dictionary<string, string> Objects, long Revision,
        List<(uint Id, LabelSet Labels)> Identities, Dictionary<string, IReadOnlyList<IPAddress>> Addresses);

    /// <summary>
    /// Runs one change under the lock. <paramref name="change"/> validates and changes the desired state in memory
    /// only (engine and objects); then the maps are planned (their capacity checked before anything is written), the
    /// state is persisted, and only then the sandbox and the kernel follow. Any failure puts memory, sandbox, kernel
    /// and disk back as they were: nothing is enforced that is not remembered, nothing remembered that was refused.
    /// </summary>
    private async Task<ApplyResponse> CommitAsync(Func<List<ObjectChange>> change, CancellationToken cancel)
    {
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var before = new Snapshot(new Dictionary<string, string>(_objects, StringComparer.Ordinal), _revision, PodIdentities(), PodAddresses());
            var persisted = false;
            try
            {
                var changes = change();
                var plan = Plan();
                _revision++;
                Save();
                persisted = true;
                if (Enforce(plan, attachAll: false))
                {
                    Save(); // the sandbox's records of pods it created
                }
                Publish();
                return new ApplyResponse(_revision, changes);
            }
            catch (Exception)
            {
                Rollback(before, persisted);
                Publish();
                throw;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    private void Rollback(Snapshot before, bool persisted)
    {
        _objects = before.Objects;
        _revision = before.Revision;
        try
        {
            RebuildEngine(before.Identities, before.Addresses);
            Enforce(Plan(), attachAll: false);
            if (persisted)
            {
                Save();
            }
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or BpfException or AgentInputException)
        {
            // Memory is back; the kernel or the disk refused to follow. Say so loudly: a restart restores from disk.
            Console.Error.WriteLine($"error: undoing a failed change was incomplete: {e.Message}");
        }
    }

    public Task<ApplyResponse> ApplyAsync(ManifestRequest request, bool policiesOnly = false, CancellationToken cancel = default)
    {
        var set = Parse(request);
        if (policiesOnly && (set.Pods.Count > 0 || set.Namespaces.Count > 0))
        {
            throw new AgentInputException("policy import takes policies only; use 'membrane apply' for Namespaces and Pods");
        }
        return CommitAsync(() => Apply(set), cancel);
    }

    private static ManifestSet Parse(ManifestRequest request)
    {
        if (request.Yaml is null)
        {
            throw new AgentInputException("the request has no \"yaml\": send {\"yaml\": \"<documents>\", \"file\": \"<name for errors>\"}");
        }
        var result = ManifestLoader.LoadText(request.Yaml, request.File ?? "request");
        if (!result.IsValid)
        {
            throw new AgentInputException($"{result.Errors.Count} error(s); nothing was applied", result.Errors);
        }
        if (result.Manifests.Policies.Count + result.Manifests.Pods.Count + result.Manifests.Namespaces.Count == 0)
        {
            throw new AgentInputException($"{request.File ?? "request"}: no objects found");
        }
        return result.Manifests;
    }

    private List<ObjectChange> Apply(ManifestSet set)
    {
        // Validate against the current state before touching anything.
        var namespaces = set.Namespaces.Select(n => n.Name).Concat(_engine.Namespaces.Select(n => n.Name)).Append("default").ToHashSet();
        foreach (var pod in set.Pods)
        {
            if (!namespaces.Contains(pod.Namespace))
            {
                throw new AgentInputException($"{pod.File}: Pod/{pod.Key}: namespace \"{pod.Namespace}\" does not exist; apply the Namespace first (or in the same file)");
            }
            if (_engine.FindEndpoint(pod.Key) is { } existing && !existing.Pod.SameShape(pod))
            {
                throw new AgentInputException($"{pod.File}: Pod/{pod.Key}: conflicts with the running pod (only labels of a pod can change); delete it first");
            }
        }
        CheckRequestedAddresses(set.Pods);
        var changes = new List<ObjectChange>();
        foreach (var ns in set.Namespaces)
        {
            var key = $"Namespace/{ns.Name}";
            changes.Add(new(key, Change(key, ns.SourceYaml)));
            _engine.UpsertNamespace(ns);
        }
        foreach (var pod in set.Pods)
        {
            var key = $"Pod/{pod.Key}";
            changes.Add(new(key, Change(key, pod.SourceYaml)));
            // A running pod keeps its addresses (a pod's addresses never change while it runs).
            _engine.UpsertPod(_engine.FindEndpoint(pod.Key) is { } running ? pod with { Addresses = running.Addresses } : pod);
        }
        foreach (var policy in set.Policies)
        {
            var key = policy.Origin.ToString();
            changes.Add(new(key, Change(key, policy.SourceYaml)));
            _engine.UpsertPolicy(policy);
        }
        return changes;
    }

    /// <summary>
    /// Addresses a user asks for (<c>status.podIPs</c>) must be usable before anything changes: one of each family
    /// (every sandbox pod has both), inside the pod ranges, not the node's, not another pod's, and for a running pod
    /// the ones it has.
    /// </summary>
    private void CheckRequestedAddresses(IReadOnlyList<PodManifest> pods)
    {
        var owners = _engine.Endpoints.SelectMany(e => e.Addresses.Select(a => (a, e.Key))).ToDictionary(x => x.a, x => x.Key);
        var node = new[] { AgentOptions.GatewayIPv4, AgentOptions.GatewayIPv6, _options.NodeIPv4, _options.NodeIPv6 };
        foreach (var pod in pods.Where(p => p.Addresses.Count > 0))
        {
            var where = $"{pod.File}: Pod/{pod.Key}: status.podIPs";
            if (pod.Addresses.Count(a => a.AddressFamily == AddressFamily.InterNetwork) != 1 || pod.Addresses.Count(a => a.AddressFamily == AddressFamily.InterNetworkV6) != 1)
            {
                throw new AgentInputException($"{where} must name one IPv4 and one IPv6 address (every pod has both), or be left out for the agent to choose");
            }
            if (_engine.FindEndpoint(pod.Key) is { } running)
            {
                if (!running.Addresses.ToHashSet().SetEquals(pod.Addresses))
                {
                    throw new AgentInputException($"{where}: the running pod has {string.Join(", ", running.Addresses)}; a pod's addresses cannot change (delete it first)");
                }
                continue;
            }
            foreach (var address in pod.Addresses)
            {
                if (!_options.PodIPv4Range.Contains(address) && !_options.PodIPv6Range.Contains(address))
                {
                    throw new AgentInputException($"{where}: {address} is outside the pod ranges {_options.PodIPv4Range} / {_options.PodIPv6Range}");
                }
                if (node.Contains(address) || address.Equals(_options.PodIPv4Range.BaseAddress) || address.Equals(_options.PodIPv6Range.BaseAddress))
                {
                    throw new AgentInputException($"{where}: {address} is the node's own address");
                }
                if (owners.TryGetValue(address, out var owner))
                {
                    throw new AgentInputException($"{where}: {address} is already used by Pod/{owner}");
                }
                owners[address] = pod.Key;
            }
        }
    }

    private string Change(string key, string yaml)
    {
        var action = !_objects.TryGetValue(key, out var old) ? "created" : old == yaml ? "unchanged" : "configured";
        _objects[key] = yaml;
        return action;
    }

    public Task<ApplyResponse> DeleteAsync(ManifestRequest request, CancellationToken cancel = default)
    {
        var set = Parse(request);
        return CommitAsync(() =>
        {
            var keys = set.Policies.Select(p => p.Origin.ToString())
                .Concat(set.Pods.Select(p => $"Pod/{p.Key}"))
                .Concat(set.Namespaces.Select(n => $"Namespace/{n.Name}")).ToList();
            var missing = keys.Where(k => !_objects.ContainsKey(k)).ToList();
            if (missing.Count > 0)
            {
                throw new AgentInputException($"not found: {string.Join(", ", missing)}; nothing was deleted");
            }
            var changes = new List<ObjectChange>();
            foreach (var policy in set.Policies)
            {
                _engine.RemovePolicy(policy.Origin.ToString());
                _objects.Remove(policy.Origin.ToString());
                changes.Add(new(policy.Origin.ToString(), "deleted"));
            }
            var pods = set.Pods.Select(p => p.Key)
                .Concat(set.Namespaces.SelectMany(n => _engine.Endpoints.Select(e => e.Key).Where(k => k.StartsWith(n.Name + "/", StringComparison.Ordinal))))
                .Distinct().ToList();
            foreach (var key in pods)
            {
                _engine.RemovePod(key);
                _objects.Remove($"Pod/{key}");
                changes.Add(new($"Pod/{key}", "deleted"));
            }
            foreach (var ns in set.Namespaces)
            {
                _engine.RemoveNamespace(ns.Name);
                _objects.Remove($"Namespace/{ns.Name}");
                changes.Add(new($"Namespace/{ns.Name}", "deleted"));
            }
            return changes;
        }, cancel);
    }

    private void RemovePodResources(string key)
    {
        _servers.Stop(key);
        if (_records.Remove(key, out var record))
        {
            _pods.Delete(record);
            _attached.Remove(record.IfIndex);
            Datapath.Policy.Remove((uint)record.IfIndex);
            Datapath.Endpoints.Remove((uint)record.IfIndex);
        }
    }

    /// <summary>Deletes policies by name (<c>Kind/ns/name</c>, <c>ns/name</c> or <c>name</c>), or all of them.</summary>
    public Task<ApplyResponse> DeletePoliciesAsync(string? name, bool all, CancellationToken cancel = default) => CommitAsync(() =>
    {
        var policies = _engine.Policies.Select(p => p.Origin).ToList();
        List<PolicyOrigin> targets;
        if (all)
        {
            targets = policies;
        }
        else
        {
            var n = name ?? throw new AgentInputException("name a policy or use --all");
            targets = policies.Where(o => o.ToString() == n || $"{o.Namespace}/{o.Name}" == n || o.Name == n).ToList();
            if (targets.Count == 0)
            {
                throw new AgentInputException($"no policy \"{n}\"");
            }
            if (targets.Count > 1)
            {
                throw new AgentInputException($"\"{n}\" is ambiguous: {string.Join(", ", targets)}; use Kind/namespace/name");
            }
        }
        foreach (var origin in targets)
        {
            _engine.RemovePolicy(origin.ToString());
            _objects.Remove(origin.ToString());
        }
        return targets.Select(t => new ObjectChange(t.ToString(), "deleted")).ToList();
    }, cancel);

    /// <summary>Removes every pod, namespace and policy (the sandbox is left empty; the agent keeps running).</summary>
    public Task<ApplyResponse> ResetAsync(CancellationToken cancel = default) => CommitAsync(() =>
    {
        var changes = _objects.Keys.Select(k => new ObjectChange(k, "deleted")).ToList();
        _objects.Clear();
        _engine = NewEngine();
        return changes;
    }, cancel);

    /// <summary>What a change will write: the resolved dirty endpoints and the ipcache, checked against map sizes.</summary>
    private sealed record RegenerationPlan(IReadOnlyList<EndpointPolicy> Dirty, IReadOnlyList<(IPNetwork Prefix, uint Identity)> IpCache);

    /// <summary>Resolves what changed and checks that it fits the maps; nothing is written, so a refusal changes nothing.</summary>
    private RegenerationPlan Plan()
    {
        var dirty = _engine.ResolveDirty();
        var host = new[] { AgentOptions.GatewayIPv4, _options.NodeIPv4, _options.NodeIPv6 }
            .Select(a => (new IPNetwork(a, a.AddressFamily == AddressFamily.InterNetwork ? 32 : 128), ReservedIdentities.Host));
        var ipcache = _engine.IpCache().Concat(host).ToList();
        try
        {
            // Pods not created yet have no interface: a placeholder index that no real interface has counts them.
            var placeholder = uint.MaxValue;
            Datapath.Policy.CheckCapacity(dirty.Select(p => (_records.TryGetValue(p.Endpoint.Key, out var r) ? (uint)r.IfIndex : placeholder--, p.Endpoint.Key, p.State.Count)));
            Datapath.IpCache.CheckCapacity(ipcache);
        }
        catch (MapCapacityException e)
        {
            throw new AgentInputException($"{e.Message}; nothing was changed");
        }
        return new RegenerationPlan(dirty, ipcache);
    }

    /// <summary>
    /// Brings the sandbox and the kernel in line with the engine: pods created or removed, dirty endpoints' policy,
    /// the ipcache, and programs where missing. True when pods were created (their records need saving).
    /// </summary>
    private bool Enforce(RegenerationPlan plan, bool attachAll)
    {
        var watch = Stopwatch.StartNew();
        foreach (var key in _records.Keys.Where(k => _engine.FindEndpoint(k) is null).ToList())
        {
            RemovePodResources(key);
        }
        var created = false;
        foreach (var endpoint in _engine.Endpoints.Where(e => !_records.ContainsKey(e.Key)).ToList())
        {
            _records[endpoint.Key] = _pods.Create(endpoint.Key, endpoint.Addresses);
            created = true;
            _servers.Start(endpoint.Pod, _records[endpoint.Key].Netns);
        }
        // Make before break for pods whose identity changes (a label change): until the ipcache says Y, their
        // packets still carry the old identity X, so the maps first hold Y's new entries under X too, then the
        // ipcache switches, then the X copies go. Those copies give X's packets exactly the new verdict of Y.
        var aliases = DepartingIdentities(plan.IpCache);
        var changed = new Dictionary<uint, MapState>();
        var aliased = new List<(uint IfIndex, MapState State)>();
        foreach (var policy in plan.Dirty)
        {
            if (!_records.TryGetValue(policy.Endpoint.Key, out var record))
            {
                continue;
            }
            var state = WithAliases(policy.State, aliases);
            if (Datapath.Policy.Sync((uint)record.IfIndex, state).Changes > 0)
            {
                changed[(uint)record.IfIndex] = policy.State;
            }
            if (!ReferenceEquals(state, policy.State))
            {
                aliased.Add(((uint)record.IfIndex, policy.State));
            }
        }
        Datapath.IpCache.Sync(plan.IpCache);
        foreach (var (ifIndex, state) in aliased)
        {
            Datapath.Policy.Sync(ifIndex, state);
        }
        var toAttach = _records.Values.Where(r => attachAll || !_attached.Contains(r.IfIndex)).ToList();
        if (toAttach.Count > 0)
        {
            // The addresses a pod may send from go in before its programs: without them it may send nothing.
            foreach (var record in toAttach)
            {
                Datapath.Endpoints.Set((uint)record.IfIndex, record.Addresses.Select(IPAddress.Parse));
            }
            NetworkNamespace.Run(_node.Name, () =>
            {
                foreach (var record in toAttach)
                {
                    TcAttachment.Attach(record.IfIndex, TcDirection.Ingress, Datapath.FromPod);
                    TcAttachment.Attach(record.IfIndex, TcDirection.Egress, Datapath.ToPod);
                }
            });
            _attached.UnionWith(toAttach.Select(r => r.IfIndex));
        }
        if (changed.Count > 0)
        {
            RevalidateConnections(changed);
        }
        LastRegenerationMilliseconds = watch.Elapsed.TotalMilliseconds;
        return created;
    }

    /// <summary>
    /// Identities the ipcache maps now that the new ipcache no longer has, each with the one identity its addresses
    /// move to (X → Y). An identity whose addresses go to several identities, or away, has no alias.
    /// </summary>
    private Dictionary<uint, uint> DepartingIdentities(IReadOnlyList<(IPNetwork Prefix, uint Identity)> next)
    {
        var nextByPrefix = next.ToDictionary(e => e.Prefix, e => e.Identity);
        var staying = next.Select(e => e.Identity).ToHashSet();
        var moves = new Dictionary<uint, HashSet<uint>>();
        foreach (var (prefix, identity) in Datapath.IpCache.Written())
        {
            if (!staying.Contains(identity) && nextByPrefix.TryGetValue(prefix, out var successor))
            {
                if (!moves.TryGetValue(identity, out var successors))
                {
                    successors = [];
                    moves[identity] = successors;
                }
                successors.Add(successor);
            }
        }
        return moves.Where(m => m.Value.Count == 1).ToDictionary(m => m.Key, m => m.Value.Single());
    }

    /// <summary>The state plus, for each alias X → Y, a copy of every entry of Y under X.</summary>
    private static MapState WithAliases(MapState state, Dictionary<uint, uint> aliases)
    {
        if (aliases.Count == 0)
        {
            return state;
        }
        var byTarget = aliases.GroupBy(a => a.Value).ToDictionary(g => g.Key, g => g.Select(a => a.Key).ToList());
        Dictionary<PolicyKey, PolicyEntry>? entries = null;
        foreach (var (key, entry) in state.Entries)
        {
            if (byTarget.TryGetValue(key.Identity, out var departing))
            {
                entries ??= new Dictionary<PolicyKey, PolicyEntry>(state.Entries);
                foreach (var old in departing)
                {
                    entries.TryAdd(key with { Identity = old }, entry);
                }
            }
        }
        return entries is null ? state : new MapState(entries);
    }

    /// <summary>
    /// Connections opened under the old policy that the new one denies are forgotten, so their next packet meets
    /// the new policy: a narrowing change takes effect on established traffic too, not only on new connections.
    /// </summary>
    private void RevalidateConnections(Dictionary<uint, MapState> changed)
    {
        foreach (var (key, value) in Datapath.Conntrack.Entries().ToList())
        {
            if (!changed.TryGetValue(key.IfIndex, out var state))
            {
                continue;
            }
            var (source, destination, port) = value.OpenedLo == 1 ? (key.Lo, key.Hi, key.HiPort) : (key.Hi, key.Lo, key.LoPort);
            var direction = (TrafficDirection)value.Direction;
            var peer = _engine.IdentityOf(direction == TrafficDirection.Egress ? destination : source);
            // An ICMP query's key carries the request's type where a port would be (see icmp_ports in bpf/parse.h).
            var keyPort = IpProtocol.IsIcmp(key.Protocol) ? (ushort)(port << 8) : port;
            if (!state.Lookup(direction, peer, key.Protocol, keyPort).Allowed)
            {
                Datapath.Conntrack.Delete(key);
            }
        }
    }

    private void Save()
    {
        try
        {
            SaveState();
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"cannot write the state file {_store.FilePath}: {e.Message}; the change was undone", e);
        }
    }

    private void SaveState() => _store.Save(new PersistedState
    {
        Objects = new(_objects),
        Endpoints = new(_records),
        Identities = _engine.Identities.Where(i => i.Kind == IdentityKind.Pod).Select(i => new IdentityRecord(i.Id, i.Labels.Canonical)).ToList(),
        Revision = _revision,
    });

    // ---- queries ----

    public async Task<T> ReadAsync<T>(Func<T> query)
    {
        await _gate.WaitAsync().ConfigureAwait(false);
        try
        {
            return query();
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>What status reports, published after every change: status never waits behind a long change.</summary>
    private sealed record Published(long Revision, int Endpoints, int Identities, int Policies, int Namespaces, double RegenerationMilliseconds,
        List<MapFillOutput> Maps);

    private volatile Published? _published;

    private void Publish() => _published = new(_revision, _records.Count, _engine.Identities.Count(), _engine.Policies.Count(),
        _engine.Namespaces.Count(), Math.Round(LastRegenerationMilliseconds, 3), MapFill());

    /// <summary>Safe without the lock: the last published state and the kernel's counters.</summary>
    public StatusResponse Status()
    {
        var p = _published ?? throw new InvalidOperationException("the agent is still starting");
        var drops = Datapath.DropCounters().ToDictionary(d => DropReasons.Describe(d.Key), d => d.Value.Packets);
        return new StatusResponse(typeof(AgentService).Assembly.GetName().Version?.ToString() ?? "0", p.Revision,
            File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), p.Endpoints, p.Identities, p.Policies, p.Namespaces,
            _options.StateDirectory, _options.PinDirectory, _options.NodeNamespace, drops, p.RegenerationMilliseconds, p.Maps);
    }

    private List<MapFillOutput> MapFill()
    {
        var (v4, v6) = Datapath.IpCache.Count;
        MapFillOutput Fill(BpfMap map, long entries) => new(map.Name, entries, map.MaxEntries, Math.Round(100.0 * entries / map.MaxEntries, 2));
        return [Fill(Datapath.PolicyMap, Datapath.Policy.Count), Fill(Datapath.IpCache4Map, v4), Fill(Datapath.IpCache6Map, v6),
            Fill(Datapath.EndpointMap, _records.Count)];
    }

    public PolicyListResponse Policies() => new(_revision, _engine.Policies
        .OrderBy(p => p.Origin.ToString(), StringComparer.Ordinal)
        .Select(p => new PolicyItem(p.Origin.Kind, p.Origin.Namespace, p.Origin.Name, p.SourceYaml)).ToList());

    public TraceOutput Trace(TraceQuery query)
    {
        TraceRequest request;
        try
        {
            request = FlowSpec.Parse(query.From, query.To, query.Protocol, query.Port, query.IcmpType, query.IcmpCode, query.Family);
        }
        catch (ArgumentException e)
        {
            throw new AgentInputException(e.Message);
        }
        foreach (var pod in new[] { request.From, request.To }.Where(p => !Tracer.IsLabels(p)))
        {
            if (_engine.FindEndpoint(pod) is null)
            {
                throw new AgentInputException($"no pod {pod}");
            }
        }
        var result = Tracer.Trace(_engine, request);
        return TraceJson.From(result) with { Text = Tracer.Format(_engine, result) };
    }

    public List<EndpointOutput> Endpoints() =>
        _records.Values.OrderBy(r => r.Key, StringComparer.Ordinal).Select(r => Endpoint(r)).ToList();

    public EndpointOutput Endpoint(string idOrPod)
    {
        return Endpoint(FindRecord(idOrPod));
    }

    private EndpointRecord FindRecord(string idOrPod) =>
        (int.TryParse(idOrPod, out var id) ? _records.Values.FirstOrDefault(r => r.IfIndex == id) : _records.GetValueOrDefault(idOrPod))
        ?? throw new AgentInputException($"no endpoint \"{idOrPod}\" (use an id from 'membrane endpoint list' or NAMESPACE/POD)");

    private EndpointOutput Endpoint(EndpointRecord record)
    {
        var policy = _engine.Resolve(record.Key);
        var e = policy.Endpoint;
        return new EndpointOutput(record.IfIndex, record.Key, e.Identity.Id, e.Labels.Labels.Select(l => l.ToString()).ToList(),
            e.Address(AddressFamily.InterNetwork)?.ToString(), e.Address(AddressFamily.InterNetworkV6)?.ToString(),
            record.HostInterface, record.Netns, policy.Enforced.Contains(TrafficDirection.Ingress), policy.Enforced.Contains(TrafficDirection.Egress),
            policy.State.Count, policy.SelectingSpecs.Select(s => $"{s.Origin}: {s.Path}").Distinct().ToList());
    }

    public List<IdentityOutput> Identities() => _engine.Identities.Select(i => new IdentityOutput(i.Id, i.Kind.ToString().ToLowerInvariant(),
        i.Labels.Labels.Select(l => l.ToString()).ToList(),
        _engine.Endpoints.Where(e => e.Identity.Id == i.Id).Select(e => e.Key).Order(StringComparer.Ordinal).ToList())).ToList();

    public BpfPolicyOutput BpfPolicy(string idOrPod)
    {
        var record = FindRecord(idOrPod);
        var entries = Datapath.Policy.Dump((uint)record.IfIndex)
            .OrderBy(e => e.Key.Direction).ThenBy(e => e.Key.Identity).ThenBy(e => e.Key.Protocol).ThenBy(e => e.Key.Port)
            .Select(e => new BpfPolicyEntryOutput(e.Key.Direction.ToString(), e.Key.Identity, IdentityName(e.Key.Identity),
                e.Key.PortProtocol, e.Value.Deny == 1 ? "deny" : "allow", e.Key.Kind.ToString(), e.Value.Packets, e.Value.Bytes,
                Datapath.Rules.Describe(e.Value.RuleId))).ToList();
        return new BpfPolicyOutput(record.IfIndex, record.Key, entries);
    }

    /// <summary>The kernel's ipcache: every address prefix the datapath maps to an identity (anything else is world).</summary>
    public List<IpCacheOutput> IpCache() => Datapath.IpCache.Dump()
        .OrderBy(e => e.Prefix.BaseAddress.AddressFamily).ThenBy(e => Convert.ToHexString(e.Prefix.BaseAddress.GetAddressBytes()), StringComparer.Ordinal).ThenBy(e => e.Prefix.PrefixLength)
        .Select(e => new IpCacheOutput(e.Prefix.ToString(), e.Identity, IdentityName(e.Identity))).ToList();

    /// <summary>Removes tracked connections (of one endpoint, or all): their next packets meet policy as new ones.</summary>
    public ConntrackFlushOutput FlushConntrack(string? endpoint) => new(Datapath.Conntrack.Flush(EndpointIfIndex(endpoint)));

    private uint? EndpointIfIndex(string? endpoint) =>
        endpoint is null ? null : (uint)FindRecord(endpoint).IfIndex;

    public List<ConntrackOutput> Conntrack(string? endpoint = null)
    {
        var now = KernelTicks.Now();
        var ifIndex = EndpointIfIndex(endpoint);
        var pods = _records.Values.ToDictionary(r => (uint)r.IfIndex, r => r.Key);
        return Datapath.Conntrack.Entries().Where(e => ifIndex is null || e.Key.IfIndex == ifIndex).Select(e =>
        {
            var (k, v) = (e.Key, e.Value);
            var (src, sport, dst, dport) = v.OpenedLo == 1 ? (k.Lo, k.LoPort, k.Hi, k.HiPort) : (k.Hi, k.HiPort, k.Lo, k.LoPort);
            var endpoint = pods.GetValueOrDefault(k.IfIndex) ?? $"ifindex {k.IfIndex}";
            var proto = IpProtocol.Name(k.Protocol);
            string Addr(IPAddress a, ushort port) => IpProtocol.IsIcmp(k.Protocol) ? a.ToString() : a.AddressFamily == AddressFamily.InterNetworkV6 ? $"[{a}]:{port}" : $"{a}:{port}";
            var flags = new List<string>();
            if ((v.Flags & ConntrackValue.SeenReply) != 0)
            {
                flags.Add("replied");
            }

            if ((v.Flags & ConntrackValue.SeenRst) != 0)
            {
                flags.Add("rst");
            }

            if ((v.Flags & (ConntrackValue.SeenFinForward | ConntrackValue.SeenFinReverse)) != 0)
            {
                flags.Add("fin");
            }

            var id = IpProtocol.IsIcmp(k.Protocol) ? $" type={dport} id={sport}" : ""; // the request's type and identifier
            return new ConntrackOutput(endpoint, proto, Addr(src, sport), Addr(dst, dport) + id, v.Direction == 0 ? "ingress" : "egress",
                now is { } n ? Math.Round(ConntrackTable.SecondsSince(v.Created, n), 1) : null, now is { } m ? Math.Round(ConntrackTable.SecondsSince(v.LastSeen, m), 1) : null, v.Packets, v.Bytes, string.Join(",", flags));
        }).OrderBy(c => c.Endpoint, StringComparer.Ordinal).ToList();
    }

    /// <summary>What the monitor shows for an interface index and an identity.</summary>
    private (string Endpoint, string Peer) Describe(uint ifIndex, uint identity) =>
        (_records.Values.FirstOrDefault(r => r.IfIndex == ifIndex)?.Key ?? $"ifindex {ifIndex}", IdentityName(identity));

    private string IdentityName(uint identity)
    {
        if (identity == ReservedIdentities.Any)
        {
            return "ANY";
        }
        var pods = _engine.Endpoints.Where(e => e.Identity.Id == identity).Select(e => e.Key).Order(StringComparer.Ordinal).ToList();
        if (pods.Count > 0)
        {
            return string.Join(",", pods.Take(3)) + (pods.Count > 3 ? $",+{pods.Count - 3}" : "");
        }
        return _engine.IdentityAllocator.Get(identity)?.Labels.Canonical ?? "?";
    }

    /// <summary>Pods, with their namespaces and addresses, for probes.</summary>
    internal (EndpointRecord Record, Endpoint Endpoint)? Pod(string key) =>
        _records.TryGetValue(key, out var r) && _engine.FindEndpoint(key) is { } e ? (r, e) : null;

    internal IReadOnlyList<string> PodKeys() => _records.Keys.Order(StringComparer.Ordinal).ToList();

    internal void SetMtu(string pod, int mtu) => _pods.SetMtu(_records[pod], mtu);

    public void Dispose()
    {
        Events.Dispose();
        Datapath.Dispose();
        _gate.Dispose();
    }

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEuid();
}

/// <summary>Trace results in the API's JSON shape.</summary>
public static class TraceJson
{
    public static TraceOutput From(TraceResult r)
    {
        static TraceSideOutput Side(DirectionTrace s) => new(s.Direction.ToString().ToLowerInvariant(), s.Endpoint, s.PeerIdentity,
            s.Enforced, s.SelectingPolicies, s.Allowed ? "ALLOWED" : "DENIED", s.Reason, s.MatchedKey, s.MatchKind, s.Rules);
        var q = r.Request;
        return new TraceOutput(q.From, q.To, IpProtocol.Name(q.Protocol).ToLowerInvariant(), q.IsIcmp ? null : q.Port,
            q.IsIcmp ? q.IcmpType : null, q.IcmpCode, q.Family == AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4",
            r.SourceIdentity, r.DestinationIdentity, Side(r.Egress), Side(r.Ingress), r.Verdict);
    }
}
