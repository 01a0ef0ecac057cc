using System.Net;
using Membrane.Policy.Identity;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>
/// The policy engine, composed as the reference system's policy subsystem is: a <see cref="PolicyRepository"/>
/// (rules, their selectors, CIDR identities), an <see cref="EndpointIndex"/> (endpoints by key, identity and address;
/// the ipcache view), a <see cref="DependencyTracker"/> (what must be resolved again) and a <see cref="Resolver"/>
/// (rules → map state, pure). Changes are incremental: a policy change makes dirty only the endpoints its subjects
/// select, an identity change only the endpoints whose rules read a selector whose selection changed. Reads never
/// change it: <see cref="Resolve"/> is pure, and only <see cref="ResolveDirty"/> takes the dirty set. Pod addresses
/// come with the pods (the agent's IPAM gives them). Not thread-safe: the owner serialises calls.
/// </summary>
public sealed partial class PolicyEngine
{
    private readonly IdentityAllocator _identities;
    private readonly SelectorCache _cache = new();
    private readonly EndpointIndex _index = new();
    private readonly DependencyTracker _tracker = new();
    private readonly PolicyRepository _repository;
    private readonly Resolver _resolver;
    private readonly Dictionary<string, EndpointPolicy> _resolved = new(StringComparer.Ordinal);

    public PolicyEngine()
        : this(new IdentityAllocator())
    {
    }

    /// <summary>An engine numbering identities with <paramref name="identities"/> (cluster mode: numbers from the store).</summary>
    public PolicyEngine(IdentityAllocator identities)
    {
        _identities = identities ?? throw new ArgumentNullException(nameof(identities));
        _repository = new PolicyRepository(_identities, _cache, _index);
        _resolver = new Resolver(_repository, _cache, _index);
        foreach (var reserved in ReservedIdentities.All)
        {
            _cache.AddIdentity(reserved);
        }
    }

    /// <summary>Increases with every change to policies or workloads.</summary>
    public long Revision { get; private set; }

    public IEnumerable<PolicyDocument> Policies => _repository.Policies;

    public IEnumerable<NamespaceManifest> Namespaces => _index.Namespaces;

    public IEnumerable<Endpoint> Endpoints => _index.Endpoints;

    public IEnumerable<SecurityIdentity> Identities => _identities.All;

    public IdentityAllocator IdentityAllocator => _identities;

    /// <summary>Endpoints by key, identity and address, and the ipcache view.</summary>
    public EndpointIndex Index => _index;

    /// <summary>How many endpoint resolutions were computed (for tests of incrementality).</summary>
    public int ResolutionCount { get; private set; }

    /// <summary>Selector tests made by the selector cache (see <see cref="SelectorCache.Evaluations"/>).</summary>
    public long SelectorEvaluations => _cache.Evaluations;

    public Endpoint? FindEndpoint(string key) => _index.Find(key);

    public PolicyDocument? FindPolicy(string origin) => _repository.Find(origin);

    /// <summary>
    /// Which endpoints this node enforces; only they are resolved by <see cref="ResolveDirty"/>. Pods of other
    /// nodes still have identities and are peers. All pods are local in the single-node sandbox.
    /// </summary>
    public Predicate<string> IsLocal { get; init; } = _ => true;

    /// <summary>The endpoints whose policy changed since they were last resolved.</summary>
    public IReadOnlyCollection<string> Dirty => _tracker.Dirty;

    /// <summary>An endpoint's policy: the cached one when it is clean, else computed now. Changes nothing.</summary>
    public EndpointPolicy Resolve(string endpointKey)
    {
        var endpoint = _index.Find(endpointKey) ?? throw new KeyNotFoundException($"no pod {endpointKey}");
        if (!_tracker.IsDirty(endpointKey) && _resolved.TryGetValue(endpointKey, out var cached))
        {
            return cached;
        }
        return Compute(endpoint).Policy;
    }

    /// <summary>Takes the dirty set: resolves every dirty local endpoint, caches it, and returns those recomputed.</summary>
    public IReadOnlyList<EndpointPolicy> ResolveDirty()
    {
        return _tracker.Take(IsLocal).Select(Commit).ToList();
    }

    /// <summary>Every endpoint's policy, local or not: dirty and uncached ones are resolved and cached (the dirty set is taken).</summary>
    public IReadOnlyList<EndpointPolicy> ResolveAll() => _index.Keys.Order(StringComparer.Ordinal).ToList()
        .Select(key => !_tracker.IsDirty(key) && _resolved.TryGetValue(key, out var cached) ? cached : Commit(key))
        .ToList();

    /// <summary>Resolves an endpoint and keeps the result until a selector it read changes.</summary>
    private EndpointPolicy Commit(string key)
    {
        var resolution = Compute(_index.Find(key)!);
        _tracker.Record(key, resolution.SelectorKeys, resolution.UsesNamedPorts);
        _resolved[key] = resolution.Policy;
        return resolution.Policy;
    }

    private Resolution Compute(Endpoint endpoint)
    {
        ResolutionCount++;
        return _resolver.Compute(endpoint, Revision);
    }

    /// <summary>Address prefix → identity, as the datapath's ipcache holds it.</summary>
    public IEnumerable<(IPNetwork Prefix, uint Identity)> IpCache() => _index.IpCache();

    /// <summary>The identity the datapath derives for an address (see <see cref="EndpointIndex.IdentityOf"/>).</summary>
    public uint IdentityOf(IPAddress address) => _index.IdentityOf(address);

    /// <summary>
    /// A separate engine with the same namespaces, pods (and their addresses), policies and identity numbers, for
    /// questions about hypothetical changes (a trace from or to raw labels): the live engine is never touched.
    /// </summary>
    public PolicyEngine Fork()
    {
        var copy = new PolicyEngine { IsLocal = IsLocal };
        foreach (var identity in _identities.All.Where(i => i.Kind != IdentityKind.Reserved))
        {
            copy._identities.Restore(identity.Id, identity.Labels, identity.Kind, identity.Prefix);
        }
        copy.Apply(new ManifestSet(_repository.Policies.ToList(), _index.Namespaces.ToList(), _index.Endpoints.Select(e => e.Pod)
            .ToList()));
        return copy;
    }

    /// <summary>Applies a whole manifest set: namespaces first, then pods, then policies.</summary>
    public void Apply(ManifestSet set)
    {
        ArgumentNullException.ThrowIfNull(set);
        foreach (var ns in set.Namespaces)
        {
            UpsertNamespace(ns);
        }
        foreach (var pod in set.Pods)
        {
            UpsertPod(pod);
        }
        foreach (var policy in set.Policies)
        {
            UpsertPolicy(policy);
        }
    }
}
