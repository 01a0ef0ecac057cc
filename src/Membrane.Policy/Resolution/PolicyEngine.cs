using System.Net;
using Membrane.Policy.Identity;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>
/// The policy repository and resolver. Holds policies, namespaces and pods; allocates identities; keeps a selector
/// cache; and resolves each endpoint into the <see cref="MapState"/> the datapath enforces. Changes are incremental:
/// a policy change re-resolves only the endpoints its subjects select, an identity change only the endpoints whose
/// rules use a selector whose selection changed. Not thread-safe: the owner serialises calls.
/// </summary>
public sealed partial class PolicyEngine
{
    private readonly IdentityAllocator _identities = new();
    private readonly PodAddressAllocator _addresses;
    private readonly SelectorCache _cache = new();
    private readonly Dictionary<string, StoredPolicy> _policies = new(StringComparer.Ordinal);
    private readonly Dictionary<string, NamespaceManifest> _namespaces = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Endpoint> _endpoints = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, HashSet<string>> _endpointsByIdentity = [];
    private readonly Dictionary<string, EndpointPolicy> _resolved = new(StringComparer.Ordinal);
    private readonly Dictionary<string, HashSet<string>> _dependents = new(StringComparer.Ordinal);
    private readonly Dictionary<string, HashSet<string>> _dependencies = new(StringComparer.Ordinal);
    private readonly HashSet<string> _namedPortDependents = new(StringComparer.Ordinal);
    private readonly HashSet<string> _dirty = new(StringComparer.Ordinal);
    private readonly Dictionary<string, SecurityIdentity> _cidrIdentities = new(StringComparer.Ordinal);
    private readonly Dictionary<IPAddress, uint> _identityByAddress = [];

    private sealed record StoredPolicy(PolicyDocument Document, IReadOnlyList<string> SelectorKeys, IReadOnlyList<SecurityIdentity> CidrIdentities);

    public PolicyEngine(PodAddressAllocator? addresses = null)
    {
        _addresses = addresses ?? new PodAddressAllocator();
        foreach (var reserved in ReservedIdentities.All)
        {
            _cache.AddIdentity(reserved);
        }
    }

    /// <summary>Increases with every change to policies or workloads.</summary>
    public long Revision { get; private set; }

    public IEnumerable<PolicyDocument> Policies => _policies.Values.Select(p => p.Document);

    public IEnumerable<NamespaceManifest> Namespaces => _namespaces.Values;

    public IEnumerable<Endpoint> Endpoints => _endpoints.Values;

    public IEnumerable<SecurityIdentity> Identities => _identities.All;

    public IdentityAllocator IdentityAllocator => _identities;

    /// <summary>How many endpoints were resolved since the counter was last read (for tests of incrementality).</summary>
    public int ResolutionCount { get; private set; }

    /// <summary>Selector tests made by the selector cache (see <see cref="SelectorCache.Evaluations"/>).</summary>
    public long SelectorEvaluations => _cache.Evaluations;

    public Endpoint? FindEndpoint(string key) => _endpoints.GetValueOrDefault(key);

    public PolicyDocument? FindPolicy(string origin) => _policies.GetValueOrDefault(origin)?.Document;

    /// <summary>Applies a whole manifest set: namespaces first, then pods, then policies.</summary>
    public void Apply(ManifestSet set)
    {
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
