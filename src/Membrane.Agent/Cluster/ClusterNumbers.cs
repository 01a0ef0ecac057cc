using System.Collections.Concurrent;
using Membrane.Kvstore;
using Membrane.Policy.Api;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;
using Membrane.Policy.Workloads;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Cluster;

/// <summary>
/// Cluster mode's identity numbers: a label set's number comes from the store, the same on every node. Numbers are
/// obtained before a change takes the agent's lock (<see cref="PrefetchAsync"/>), so no change waits on etcd while
/// holding it; the engine's allocator then finds them here.
/// </summary>
public sealed class ClusterNumbers(ClusterIdentities store, string? node, ILogger log)
{
    /// <summary>Numbers obtained before a change took the lock, by canonical labels.</summary>
    private readonly ConcurrentDictionary<string, uint> _numbers = new(StringComparer.Ordinal);

    /// <summary>An allocator whose pod identities take the store's numbers.</summary>
    public IdentityAllocator Allocator() => new()
    {
        PodNumbers = Number,
        PodReleased = Release,
    };

    /// <summary>Numbers for the pods of a store state placed on this node; a store that does not answer fails the change.</summary>
    public Task PrefetchAsync(IReadOnlyDictionary<string, string> objects, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(objects);
        return objects.Count == 0 ? Task.CompletedTask
            : PrefetchAsync(ManifestLoader.LoadText(string.Join("\n---\n", objects.Values), "store").Manifests, null, cancel);
    }

    /// <summary>
    /// Numbers for the pods of <paramref name="set"/> placed on this node (namespaces from the set or
    /// <paramref name="known"/>).
    /// </summary>
    public async Task PrefetchAsync(ManifestSet set, IReadOnlyDictionary<string, NamespaceManifest>? known, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(set);
        var namespaces = set.Namespaces.ToDictionary(n => n.Name, StringComparer.Ordinal);
        foreach (var pod in set.Pods.Where(p => p.NodeName == node))
        {
            var ns = namespaces.GetValueOrDefault(pod.Namespace) ?? known?.GetValueOrDefault(pod.Namespace);
            var labels = Endpoint.DeriveLabels(pod, ns).Canonical;
            if (_numbers.ContainsKey(labels))
            {
                continue;
            }
            try
            {
                _numbers[labels] = await store.AcquireAsync(labels, cancel).ConfigureAwait(false);
            }
            catch (Grpc.Core.RpcException e) when (!cancel.IsCancellationRequested)
            {
                throw new InvalidOperationException($"the cluster store is not reachable to number the identity of {labels} " +
                    $"({e.Status.StatusCode}); nothing was changed, it is tried again", e);
            }
        }
    }

    /// <summary>A label set's number: obtained before the change, else asked for now (a CNI change, or a restart).</summary>
    public uint Number(LabelSet labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        if (_numbers.TryGetValue(labels.Canonical, out var known))
        {
            return known;
        }
        try
        {
            return _numbers[labels.Canonical] = store.AcquireAsync(labels.Canonical).GetAwaiter().GetResult();
        }
        catch (Grpc.Core.RpcException e)
        {
            throw new InvalidOperationException($"the cluster store is not reachable to number the identity of {labels} " +
                $"({e.Status.StatusCode}); nothing was changed, try again when it is back", e);
        }
    }

    /// <summary>This node no longer uses the number; best effort (a use left behind ends with this node's lease).</summary>
    public void Release(uint id)
    {
        foreach (var known in _numbers.Where(n => n.Value == id).ToList())
        {
            _numbers.TryRemove(known);
        }
        _ = store.ReleaseAsync(id).ContinueWith(t => Log.ClusterReleaseFailed(log, id, t.Exception?.GetBaseException().Message ?? ""),
            CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
    }

    /// <summary>
    /// At start: this node's identities (numbers from its state file) are claimed in the store again under its new
    /// lease, so no collector takes them; a number the store gives otherwise is reported.
    /// </summary>
    public void Claim(IEnumerable<SecurityIdentity> identities)
    {
        ArgumentNullException.ThrowIfNull(identities);
        foreach (var identity in identities.Where(i => i.Kind == IdentityKind.Pod).ToList())
        {
            var number = Number(identity.Labels);
            if (number != identity.Id)
            {
                Log.ClusterNumberDiffers(log, identity.Labels.Canonical, identity.Id, number);
            }
        }
    }
}
