using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Cni;
using Membrane.Api;
using Membrane.Policy.Api;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Agent;

/// <summary>
/// The API's object changes (apply, delete, policy import/delete, reset): each validates against the current state
/// and changes the desired state in memory, then runs through the one change path (AgentService.Changes.cs).
/// </summary>
public sealed partial class AgentService
{
    public async Task<ApplyResponse> ApplyAsync(ManifestRequest request, bool policiesOnly = false, CancellationToken cancel = default)
    {
        try
        {
            return await ApplyOrRefuseAsync(request, policiesOnly, cancel).ConfigureAwait(false);
        }
        catch (Exception e) when (policiesOnly && e is AgentInputException or InvalidOperationException)
        {
            Monitoring.AgentMetrics.PolicyImportErrors.Inc();
            throw;
        }
    }

    private async Task<ApplyResponse> ApplyOrRefuseAsync(ManifestRequest request, bool policiesOnly, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(request);
        var set = Parse(request);
        if (policiesOnly && (set.Pods.Count > 0 || set.Namespaces.Count > 0))
        {
            throw new AgentInputException("policy import takes policies only; use 'membrane apply' for Namespaces and Pods");
        }
        if (set.Pods.Count > 0 && _clusterIdentities is not null)
        {
            var known = await ReadAsync(() => (IReadOnlyDictionary<string, NamespaceManifest>)_engine.Namespaces.ToDictionary(n => n.Name,
                StringComparer.Ordinal), cancel).ConfigureAwait(false);
            await PrefetchNumbersAsync(set, known, cancel).ConfigureAwait(false);
        }
        return await CommitAsync(() => Apply(set), cancel).ConfigureAwait(false);
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
        if (_options.Node is not null && _attachments is null)
        {
            // Cluster mode: a pod without spec.nodeName is placed on a ready node; the stored object names it.
            try
            {
                set = set with
                {
                    Pods = PodPlacement.Place(set.Pods, _readyNodes, _engine.Endpoints.Where(e => e.Pod.NodeName is not null)
                        .ToDictionary(e => e.Key, e => e.Pod.NodeName!, StringComparer.Ordinal)),
                };
            }
            catch (InvalidOperationException e)
            {
                throw new AgentInputException(e.Message);
            }
        }
        // Validate against the current state before touching anything.
        var namespaces = set.Namespaces.Select(n => n.Name).Concat(_engine.Namespaces.Select(n => n.Name)).Append("default").ToHashSet();
        foreach (var pod in set.Pods)
        {
            if (!namespaces.Contains(pod.Namespace))
            {
                throw new AgentInputException($"{pod.File}: Pod/{pod.Key}: namespace \"{pod.Namespace}\" does not exist; apply the " +
                    $"Namespace first (or in the same file)");
            }
            if (_attachments is null && _engine.FindEndpoint(pod.Key) is { } existing && !existing.Pod.SameShape(pod))
            {
                throw new AgentInputException($"{pod.File}: Pod/{pod.Key}: conflicts with the running pod (only labels of a pod can " +
                    $"change); delete it first");
            }
        }
        CheckRequestedAddresses(set.Pods);
        var changes = new List<ObjectChange>();
        foreach (var ns in set.Namespaces)
        {
            var key = $"Namespace/{ns.Name}";
            changes.Add(new(key, _store.Put(key, ns.SourceYaml)));
            _engine.UpsertNamespace(ns);
        }
        foreach (var pod in set.Pods)
        {
            var key = $"Pod/{pod.Key}";
            changes.Add(new(key, _store.Put(key, pod.SourceYaml)));
            if (_attachments is null && IsLocal(pod))
            {
                // A running pod keeps its addresses (a pod's addresses never change while it runs).
                _engine.UpsertPod(WithAddresses(pod, _engine.FindEndpoint(pod.Key)?.Addresses));
            }
            else if (_attachments is null)
            {
                _engine.UpsertRemotePod(WithRemoteAddresses(pod));
            }
        }
        foreach (var policy in set.Policies)
        {
            var key = policy.Origin.ToString();
            changes.Add(new(key, _store.Put(key, policy.SourceYaml)));
            _engine.UpsertPolicy(policy);
        }
        SyncCniPods(); // container runtimes: a Pod object gives a running container its labels
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
            if (_attachments is not null)
            {
                throw new AgentInputException($"{where}: a container's addresses come from its CNI attachment; leave status.podIPs out");
            }
            if (pod.Addresses.Count(a => a.AddressFamily == AddressFamily.InterNetwork) != 1 || pod.Addresses.Count(a =>
                a.AddressFamily == AddressFamily.InterNetworkV6) != 1)
            {
                throw new AgentInputException($"{where} must name one IPv4 and one IPv6 address (every pod has both), or be left out " +
                    $"for the agent to choose");
            }
            if (_engine.FindEndpoint(pod.Key) is { } running)
            {
                if (!running.Addresses.ToHashSet().SetEquals(pod.Addresses))
                {
                    throw new AgentInputException($"{where}: the running pod has {string.Join(", ", running.Addresses)}; a pod's " +
                        $"addresses cannot change (delete it first)");
                }
                continue;
            }
            foreach (var address in pod.Addresses)
            {
                if (!_options.PodIPv4Range.Contains(address) && !_options.PodIPv6Range.Contains(address))
                {
                    throw new AgentInputException($"{where}: {address} is outside the pod ranges {_options.PodIPv4Range} / " +
                        $"{_options.PodIPv6Range}");
                }
                if (node.Contains(address) || address.Equals(_options.PodIPv4Range.BaseAddress)
                    || address.Equals(_options.PodIPv6Range.BaseAddress))
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

    public Task<ApplyResponse> DeleteAsync(ManifestRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var set = Parse(request);
        return CommitAsync(() =>
        {
            var keys = set.Policies.Select(p => p.Origin.ToString())
                .Concat(set.Pods.Select(p => $"Pod/{p.Key}"))
                .Concat(set.Namespaces.Select(n => $"Namespace/{n.Name}")).ToList();
            var missing = keys.Where(k => !_store.Objects.ContainsKey(k)).ToList();
            if (missing.Count > 0)
            {
                throw new AgentInputException($"not found: {string.Join(", ", missing)}; nothing was deleted");
            }
            var changes = new List<ObjectChange>();
            foreach (var policy in set.Policies)
            {
                _engine.RemovePolicy(policy.Origin.ToString());
                _store.Remove(policy.Origin.ToString());
                changes.Add(new(policy.Origin.ToString(), "deleted"));
            }
            var pods = set.Pods.Select(p => p.Key)
                .Concat(set.Namespaces.SelectMany(n => _store.Objects.Keys
                    .Where(k => k.StartsWith($"Pod/{n.Name}/", StringComparison.Ordinal)).Select(k => k[4..])))
                .Distinct().ToList();
            foreach (var key in pods)
            {
                if (_attachments is null)
                {
                    ReleaseAddresses(key);
                    _engine.RemovePod(key);
                }
                _store.Remove($"Pod/{key}");
                changes.Add(new($"Pod/{key}", "deleted"));
            }
            foreach (var ns in set.Namespaces)
            {
                _engine.RemoveNamespace(ns.Name);
                _store.Remove($"Namespace/{ns.Name}");
                changes.Add(new($"Namespace/{ns.Name}", "deleted"));
            }
            SyncCniPods(); // a running container whose Pod object went falls back to its runtime's labels, or init
            return changes;
        }, cancel);
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
            _store.Remove(origin.ToString());
        }
        return targets.Select(t => new ObjectChange(t.ToString(), "deleted")).ToList();
    }, cancel);

    /// <summary>Removes every pod, namespace and policy (the sandbox is left empty; the agent keeps running).</summary>
    public Task<ApplyResponse> ResetAsync(CancellationToken cancel = default) => CommitAsync(() =>
    {
        var changes = _store.Objects.Keys.Select(k => new ObjectChange(k, "deleted")).ToList();
        _store.Clear();
        (_engine, _ipam) = NewEngine();
        SyncCniPods(); // running containers stay (their runtime removes them), with no labels from objects
        return changes;
    }, cancel);

    private void ReleaseAddresses(string pod)
    {
        if (_engine.FindEndpoint(pod) is not { } endpoint || !IsLocal(endpoint.Pod))
        {
            return; // another node's pod: its addresses are its node's
        }
        foreach (var address in endpoint.Addresses)
        {
            _ipam.Release(address);
        }
    }
}
