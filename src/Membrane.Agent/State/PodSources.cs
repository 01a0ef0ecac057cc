using System.Net;
using System.Net.Sockets;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.State;

/// <summary>
/// Where the engine's pods come from: the sandbox's Pod objects (<see cref="SandboxPods"/>), a cluster's Pod objects
/// placed on nodes (<see cref="ClusterPods"/>), or container runtimes' CNI attachments (<see cref="Cni.AttachedPods"/>).
/// Object changes call it at fixed points; each source does what its pods need there.
/// </summary>
public interface IPodSource
{
    /// <summary>A pod this node runs and enforces (the others are peers).</summary>
    bool IsLocal(PodManifest pod);

    /// <summary>Pod objects of an apply, placed and checked against the running state before anything changes.</summary>
    IReadOnlyList<PodManifest> Admit(DesiredState state, IReadOnlyList<PodManifest> pods);

    /// <summary>Pod objects were stored: the engine's pods follow.</summary>
    void Applied(DesiredState state, IReadOnlyList<PodManifest> pods);

    /// <summary>Pod objects are being removed (still in the engine): the engine's pods follow.</summary>
    void Removed(DesiredState state, IReadOnlyList<string> keys);

    /// <summary>Any object change is complete in memory.</summary>
    void ObjectsChanged(DesiredState state);

    /// <summary>The engine was rebuilt from the objects; <paramref name="addresses"/> are what local pods had.</summary>
    void Rebuilt(DesiredState state, IReadOnlyList<PodManifest> pods, IReadOnlyDictionary<string, IReadOnlyList<IPAddress>> addresses);
}

/// <summary>Pods from Pod objects: this node makes their interfaces and gives them addresses.</summary>
public abstract class ManifestPods(AgentOptions options) : IPodSource
{
    public abstract bool IsLocal(PodManifest pod);

    /// <summary>Where pods go: on one node, where they are.</summary>
    protected virtual IReadOnlyList<PodManifest> Place(DesiredState state, IReadOnlyList<PodManifest> pods) => pods;

    public IReadOnlyList<PodManifest> Admit(DesiredState state, IReadOnlyList<PodManifest> pods)
    {
        ArgumentNullException.ThrowIfNull(state);
        var placed = Place(state, pods);
        foreach (var pod in placed)
        {
            if (state.Engine.FindEndpoint(pod.Key) is { } existing && !existing.Pod.SameShape(pod))
            {
                throw new AgentInputException($"{pod.File}: Pod/{pod.Key}: conflicts with the running pod (only labels of a pod can " +
                    $"change); delete it first");
            }
        }
        CheckRequestedAddresses(state, placed);
        return placed;
    }

    public void Applied(DesiredState state, IReadOnlyList<PodManifest> pods)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(pods);
        foreach (var pod in pods)
        {
            // A running pod keeps its addresses (a pod's addresses never change while it runs).
            Upsert(state, pod, state.Engine.FindEndpoint(pod.Key)?.Addresses);
        }
    }

    public void Removed(DesiredState state, IReadOnlyList<string> keys)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(keys);
        foreach (var key in keys)
        {
            // Another node's pod's addresses are its node's: only this node's are released.
            if (state.Engine.FindEndpoint(key) is { } endpoint && IsLocal(endpoint.Pod))
            {
                foreach (var address in endpoint.Addresses)
                {
                    state.Ipam.Release(address);
                }
            }
            state.Engine.RemovePod(key);
        }
    }

    public void ObjectsChanged(DesiredState state)
    {
    }

    public void Rebuilt(DesiredState state, IReadOnlyList<PodManifest> pods,
        IReadOnlyDictionary<string, IReadOnlyList<IPAddress>> addresses)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(pods);
        ArgumentNullException.ThrowIfNull(addresses);
        // Every address a local pod has or asks for is taken before any pod is given a new one: a pod the state file
        // has no address for yet (a change cut short) must not be handed one that a pod later in the list holds.
        foreach (var pod in pods.Where(IsLocal))
        {
            foreach (var address in addresses.GetValueOrDefault(pod.Key) ?? pod.Addresses)
            {
                state.Ipam.Reserve(address);
            }
        }
        foreach (var pod in pods)
        {
            Upsert(state, pod, addresses.GetValueOrDefault(pod.Key));
        }
    }

    /// <summary>A local pod with the addresses it has (else new ones); another node's with what its node published.</summary>
    private void Upsert(DesiredState state, PodManifest pod, IReadOnlyList<IPAddress>? current) =>
        state.Engine.UpsertPod(IsLocal(pod) ? state.WithAddresses(pod, current) : state.WithRemoteAddresses(pod));

    /// <summary>
    /// Addresses a user asks for (<c>status.podIPs</c>) must be usable before anything changes: one of each family
    /// (every sandbox pod has both), inside the pod ranges, not the node's, not another pod's, and for a running pod
    /// the ones it has.
    /// </summary>
    private void CheckRequestedAddresses(DesiredState state, IReadOnlyList<PodManifest> pods)
    {
        var owners = state.Engine.Endpoints.SelectMany(e => e.Addresses.Select(a => (a, e.Key))).ToDictionary(x => x.a, x => x.Key);
        var node = new[] { AgentOptions.GatewayIPv4, AgentOptions.GatewayIPv6, options.NodeIPv4, options.NodeIPv6 };
        foreach (var pod in pods.Where(p => p.Addresses.Count > 0))
        {
            var where = $"{pod.File}: Pod/{pod.Key}: status.podIPs";
            if (pod.Addresses.Count(a => a.AddressFamily == AddressFamily.InterNetwork) != 1 || pod.Addresses.Count(a =>
                a.AddressFamily == AddressFamily.InterNetworkV6) != 1)
            {
                throw new AgentInputException($"{where} must name one IPv4 and one IPv6 address (every pod has both), or be left out " +
                    $"for the agent to choose");
            }
            if (state.Engine.FindEndpoint(pod.Key) is { } running)
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
                if (!options.PodIPv4Range.Contains(address) && !options.PodIPv6Range.Contains(address))
                {
                    throw new AgentInputException($"{where}: {address} is outside the pod ranges {options.PodIPv4Range} / " +
                        $"{options.PodIPv6Range}");
                }
                if (node.Contains(address) || address.Equals(options.PodIPv4Range.BaseAddress)
                    || address.Equals(options.PodIPv6Range.BaseAddress))
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
}

/// <summary>The single-node sandbox: every Pod object is a pod of this node.</summary>
public sealed class SandboxPods(AgentOptions options) : ManifestPods(options)
{
    public override bool IsLocal(PodManifest pod) => true;
}

/// <summary>
/// Cluster mode: a Pod object names its node (<c>spec.nodeName</c>, placed on a ready node when it does not); this
/// node runs its own and knows the others as peers with the addresses their nodes publish.
/// </summary>
public sealed class ClusterPods(AgentOptions options, string node) : ManifestPods(options)
{
    public override bool IsLocal(PodManifest pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        return pod.NodeName is null || pod.NodeName == node;
    }

    protected override IReadOnlyList<PodManifest> Place(DesiredState state, IReadOnlyList<PodManifest> pods)
    {
        ArgumentNullException.ThrowIfNull(state);
        try
        {
            return PodPlacement.Place(pods, state.ReadyNodes, state.Engine.Endpoints.Where(e => e.Pod.NodeName is not null)
                .ToDictionary(e => e.Key, e => e.Pod.NodeName!, StringComparer.Ordinal));
        }
        catch (InvalidOperationException e)
        {
            throw new AgentInputException(e.Message);
        }
    }
}
