using System.Net;
using Membrane.Agent.Cluster;
using Membrane.Agent.Cni;
using Membrane.Agent.Ipam;
using Membrane.Policy.Api;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Resolution;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.State;

/// <summary>Everything a change may alter in memory, as it was before the change: a failed change is put back to it.</summary>
public sealed record DesiredSnapshot(ObjectStoreSnapshot Objects, List<(uint Id, LabelSet Labels)> Identities,
    Dictionary<string, IReadOnlyList<IPAddress>> Addresses, List<CniAttachment>? Attachments,
    Dictionary<string, IReadOnlyList<IPAddress>> RemoteAddresses, IReadOnlyList<IPAddress> RemoteNodes,
    IReadOnlyCollection<string> ReadyNodes);

/// <summary>
/// The agent's desired state in memory: the objects (<see cref="IObjectStore"/>), the policy engine built from them,
/// the IPAM of this node's pods, and in cluster mode what other nodes published (their pods' addresses, their own
/// addresses, which nodes are up). Where the engine's pods come from is the <see cref="IPodSource"/>'s business.
/// Not thread-safe: the change coordinator's lock serialises it.
/// </summary>
public sealed class DesiredState
{
    private readonly AgentOptions _options;
    private readonly ClusterNumbers? _numbers;
    private readonly Dictionary<string, (string Yaml, ManifestSet Parsed)> _parsed = new(StringComparer.Ordinal);

    public DesiredState(AgentOptions options, IObjectStore store, IPodSource pods, CniAttachments? attachments = null,
        ClusterNumbers? numbers = null)
    {
        ArgumentNullException.ThrowIfNull(options);
        _options = options;
        _numbers = numbers;
        Store = store;
        Pods = pods;
        Attachments = attachments;
        (Engine, Ipam) = NewEngine();
    }

    public IObjectStore Store { get; }

    public IPodSource Pods { get; }

    /// <summary>Container runtimes' attachments (<c>--runtime cni</c>), else null.</summary>
    public CniAttachments? Attachments { get; }

    public PolicyEngine Engine { get; private set; }

    public PodAddressAllocator Ipam { get; private set; }

    /// <summary>
    /// Cluster mode: remote pods' addresses as their nodes published them, by "NODE POD": a pod gets only what the node
    /// its object names published for it, so no other node (nor a forged entry) can give its identity to an address.
    /// </summary>
    public Dictionary<string, IReadOnlyList<IPAddress>> RemoteAddresses { get; set; } = new(StringComparer.Ordinal);

    /// <summary>Cluster mode: the other nodes' own addresses (the remote-node identity in the ipcache).</summary>
    public IReadOnlyList<IPAddress> RemoteNodes { get; set; } = [];

    /// <summary>Cluster mode: the nodes announced in the store (this one included), where pods without a node go.</summary>
    public IReadOnlyCollection<string> ReadyNodes { get; set; } = [];

    /// <summary>A pod this node runs (and enforces); the others are peers resolved on their own node.</summary>
    public bool IsLocal(PodManifest pod) => Pods.IsLocal(pod);

    /// <summary>The engine's endpoints of this node's pods.</summary>
    public IEnumerable<Endpoint> LocalEndpoints => Engine.Endpoints.Where(e => IsLocal(e.Pod));

    /// <summary>An empty engine and IPAM (everything removed).</summary>
    public void Clear() => (Engine, Ipam) = NewEngine();

    private (PolicyEngine Engine, PodAddressAllocator Ipam) NewEngine()
    {
        PolicyEngine? engine = null;
        engine = new PolicyEngine(_numbers?.Allocator() ?? new IdentityAllocator())
        {
            // Pods of other nodes are peers: they have identities and addresses here, and are resolved on their node.
            IsLocal = key => engine!.FindEndpoint(key) is not { } endpoint || IsLocal(endpoint.Pod),
        };
        return (engine, new PodAddressAllocator(_options.PodIPv4Range, _options.PodIPv6Range));
    }

    /// <summary>
    /// A new engine holding exactly the store's objects: identities keep their numbers and local pods their addresses.
    /// Used at start, for a store state, and to undo a change that failed half-way.
    /// </summary>
    public void Rebuild(IReadOnlyList<(uint Id, LabelSet Labels)> identities,
        IReadOnlyDictionary<string, IReadOnlyList<IPAddress>> addresses)
    {
        ArgumentNullException.ThrowIfNull(identities);
        var (engine, ipam) = NewEngine();
        (Engine, Ipam) = (engine, ipam);
        foreach (var (id, labels) in identities)
        {
            engine.IdentityAllocator.Restore(id, labels, IdentityKind.Pod);
        }
        var set = ParsedObjects();
        foreach (var ns in set.Namespaces)
        {
            engine.UpsertNamespace(ns);
        }
        Pods.Rebuilt(this, set.Pods, addresses);
        foreach (var policy in set.Policies)
        {
            engine.UpsertPolicy(policy);
        }
    }

    /// <summary>The store's objects parsed; each object is parsed once for as long as its YAML stays the same.</summary>
    public ManifestSet ParsedObjects()
    {
        var objects = Store.Objects;
        foreach (var key in _parsed.Keys.Where(k => !objects.ContainsKey(k)).ToList())
        {
            _parsed.Remove(key);
        }
        var parts = new List<ManifestSet>(objects.Count);
        foreach (var (key, yaml) in objects.OrderBy(o => o.Key, StringComparer.Ordinal))
        {
            if (!_parsed.TryGetValue(key, out var known) || known.Yaml != yaml)
            {
                known = (yaml, ManifestLoader.LoadText(yaml, "state.json").OrThrow());
                _parsed[key] = known;
            }
            parts.Add(known.Parsed);
        }
        return parts.Count == 0 ? ManifestSet.Empty : new ManifestSet([.. parts.SelectMany(p => p.Policies)],
            [.. parts.SelectMany(p => p.Namespaces)], [.. parts.SelectMany(p => p.Pods)]);
    }

    /// <summary>
    /// The pod with addresses: those it asks for or keeps (reserved), else new ones. A running pod keeps its
    /// addresses (they never change while it runs).
    /// </summary>
    public PodManifest WithAddresses(PodManifest pod, IReadOnlyList<IPAddress>? current)
    {
        ArgumentNullException.ThrowIfNull(pod);
        var addresses = current ?? (pod.Addresses.Count > 0 ? pod.Addresses : Ipam.Allocate());
        foreach (var address in addresses)
        {
            Ipam.Reserve(address);
        }
        return pod with { Addresses = addresses };
    }

    /// <summary>A pod of another node with the addresses its node published (none yet: a peer without addresses).</summary>
    public PodManifest WithRemoteAddresses(PodManifest pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        return pod with { Addresses = RemoteAddresses.GetValueOrDefault($"{pod.NodeName} {pod.Key}") ?? [] };
    }

    public List<(uint Id, LabelSet Labels)> PodIdentities() =>
        Engine.Identities.Where(i => i.Kind == IdentityKind.Pod).Select(i => (i.Id, i.Labels)).ToList();

    public Dictionary<string, IReadOnlyList<IPAddress>> PodAddresses() =>
        LocalEndpoints.ToDictionary(e => e.Key, e => e.Addresses, StringComparer.Ordinal);

    public DesiredSnapshot Capture() => new(Store.Snapshot(), PodIdentities(), PodAddresses(), Attachments?.Snapshot(), RemoteAddresses,
        RemoteNodes, ReadyNodes);

    /// <summary>Memory as it was at <paramref name="snapshot"/>: objects, attachments, peers, and an engine rebuilt from them.</summary>
    public void Restore(DesiredSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        Store.Restore(snapshot.Objects);
        Attachments?.Restore(snapshot.Attachments ?? []);
        (RemoteAddresses, RemoteNodes, ReadyNodes) = (snapshot.RemoteAddresses, snapshot.RemoteNodes, snapshot.ReadyNodes);
        Rebuild(snapshot.Identities, snapshot.Addresses);
    }
}
