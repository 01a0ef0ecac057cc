using Membrane.Agent.Changes;
using Membrane.Agent.Cluster;
using Membrane.Agent.Monitoring;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Policy.Api;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Objects;

/// <summary>
/// The API's object changes (apply, delete, policy import/delete, reset): each validates against the current state
/// and changes the desired state in memory, inside the one change path (<see cref="ChangeCoordinator"/>). Pods go to
/// the node's <see cref="IPodSource"/>.
/// </summary>
public sealed class ObjectChanges(ChangeCoordinator coordinator, ClusterNumbers? numbers)
{
    private DesiredState State => coordinator.State;

    public async Task<ApplyResponse> ApplyAsync(ManifestRequest request, bool policiesOnly = false, CancellationToken cancel = default)
    {
        try
        {
            return await ApplyOrRefuseAsync(request, policiesOnly, cancel).ConfigureAwait(false);
        }
        catch (Exception e) when (policiesOnly && e is AgentInputException or InvalidOperationException)
        {
            AgentMetrics.PolicyImportErrors.Inc();
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
        if (set.Pods.Count > 0 && numbers is not null && State.Attachments is null)
        {
            // Numbers for new pods' identities come from the store before the lock is taken.
            var known = await coordinator.ExclusiveAsync(() => (IReadOnlyDictionary<string, NamespaceManifest>)State.Engine.Namespaces
                .ToDictionary(n => n.Name, StringComparer.Ordinal), cancel).ConfigureAwait(false);
            await numbers.PrefetchAsync(set, known, cancel).ConfigureAwait(false);
        }
        return await coordinator.ChangeAsync(ChangeSource.Api, () => Apply(set), cancel).ConfigureAwait(false);
    }

    /// <summary>The objects of a request, or the caller's error naming every problem.</summary>
    public static ManifestSet Parse(ManifestRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
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
        var engine = State.Engine;
        var store = State.Store;
        // Validate against the current state before touching anything.
        var namespaces = set.Namespaces.Select(n => n.Name).Concat(engine.Namespaces.Select(n => n.Name)).Append("default").ToHashSet();
        if (set.Pods.FirstOrDefault(p => !namespaces.Contains(p.Namespace)) is { } orphan)
        {
            throw new AgentInputException($"{orphan.File}: Pod/{orphan.Key}: namespace \"{orphan.Namespace}\" does not exist; apply the " +
                $"Namespace first (or in the same file)");
        }
        var pods = State.Pods.Admit(State, set.Pods);
        var changes = new List<ObjectChange>();
        foreach (var ns in set.Namespaces)
        {
            var key = $"Namespace/{ns.Name}";
            changes.Add(new(key, store.Put(key, ns.SourceYaml)));
            engine.UpsertNamespace(ns);
        }
        foreach (var pod in pods)
        {
            var key = $"Pod/{pod.Key}";
            changes.Add(new(key, store.Put(key, pod.SourceYaml)));
        }
        State.Pods.Applied(State, pods);
        foreach (var policy in set.Policies)
        {
            var key = policy.Origin.ToString();
            changes.Add(new(key, store.Put(key, policy.SourceYaml)));
            engine.UpsertPolicy(policy);
        }
        State.Pods.ObjectsChanged(State);
        return changes;
    }

    public Task<ApplyResponse> DeleteAsync(ManifestRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var set = Parse(request);
        return coordinator.ChangeAsync(ChangeSource.Api, () =>
        {
            var engine = State.Engine;
            var store = State.Store;
            var keys = set.Policies.Select(p => p.Origin.ToString())
                .Concat(set.Pods.Select(p => $"Pod/{p.Key}"))
                .Concat(set.Namespaces.Select(n => $"Namespace/{n.Name}")).ToList();
            var missing = keys.Where(k => !store.Objects.ContainsKey(k)).ToList();
            if (missing.Count > 0)
            {
                throw new AgentInputException($"not found: {string.Join(", ", missing)}; nothing was deleted");
            }
            var changes = new List<ObjectChange>();
            foreach (var policy in set.Policies)
            {
                engine.RemovePolicy(policy.Origin.ToString());
                store.Remove(policy.Origin.ToString());
                changes.Add(new(policy.Origin.ToString(), "deleted"));
            }
            var pods = set.Pods.Select(p => p.Key)
                .Concat(set.Namespaces.SelectMany(n => store.Objects.Keys
                    .Where(k => k.StartsWith($"Pod/{n.Name}/", StringComparison.Ordinal)).Select(k => k[4..])))
                .Distinct().ToList();
            State.Pods.Removed(State, pods);
            foreach (var key in pods)
            {
                store.Remove($"Pod/{key}");
                changes.Add(new($"Pod/{key}", "deleted"));
            }
            foreach (var ns in set.Namespaces)
            {
                engine.RemoveNamespace(ns.Name);
                store.Remove($"Namespace/{ns.Name}");
                changes.Add(new($"Namespace/{ns.Name}", "deleted"));
            }
            State.Pods.ObjectsChanged(State); // a running container whose Pod object went falls back to its runtime's labels
            return changes;
        }, cancel);
    }

    /// <summary>Deletes policies by name (<c>Kind/ns/name</c>, <c>ns/name</c> or <c>name</c>), or all of them.</summary>
    public Task<ApplyResponse> DeletePoliciesAsync(string? name, bool all, CancellationToken cancel = default) =>
        coordinator.ChangeAsync(ChangeSource.Api, () =>
        {
            var origins = State.Engine.Policies.Select(p => p.Origin).ToList();
            var targets = all ? origins : Named(origins, name ?? throw new AgentInputException("name a policy or use --all"));
            foreach (var origin in targets)
            {
                State.Engine.RemovePolicy(origin.ToString());
                State.Store.Remove(origin.ToString());
            }
            return targets.Select(t => new ObjectChange(t.ToString(), "deleted")).ToList();
        }, cancel);

    /// <summary>The one policy a name means (<c>Kind/ns/name</c>, <c>ns/name</c> or <c>name</c>); none or several is an error.</summary>
    public static List<PolicyOrigin> Named(IReadOnlyList<PolicyOrigin> origins, string name)
    {
        ArgumentNullException.ThrowIfNull(origins);
        var targets = origins.Where(o => o.ToString() == name || $"{o.Namespace}/{o.Name}" == name || o.Name == name).ToList();
        return targets.Count switch
        {
            0 => throw new AgentInputException($"no policy \"{name}\""),
            > 1 => throw new AgentInputException($"\"{name}\" is ambiguous: {string.Join(", ", targets)}; use Kind/namespace/name"),
            _ => targets,
        };
    }

    /// <summary>Removes every pod, namespace and policy (the sandbox is left empty; the agent keeps running).</summary>
    public Task<ApplyResponse> ResetAsync(CancellationToken cancel = default) => coordinator.ChangeAsync(ChangeSource.Api, () =>
    {
        var changes = State.Store.Objects.Keys.Select(k => new ObjectChange(k, "deleted")).ToList();
        State.Store.Clear();
        State.Clear();
        State.Pods.ObjectsChanged(State); // running containers stay (their runtime removes them), with no labels from objects
        return changes;
    }, cancel);
}
