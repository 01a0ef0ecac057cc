using System.Net;
using Membrane.Agent.State;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Cni;

/// <summary>
/// Container runtimes' pods (<c>--runtime cni</c>): the engine's pods are exactly the CNI attachments, each with the
/// labels of the Pod object of its namespace/name, else those its runtime reported, else none yet (the init
/// identity). Pod objects only name labels: they never create or address a pod.
/// </summary>
public sealed class AttachedPods(CniAttachments attachments) : IPodSource
{
    public CniAttachments Attachments => attachments;

    /// <summary>Every attachment is this node's: a container runtime only attaches its own containers.</summary>
    public bool IsLocal(PodManifest pod) => true;

    public IReadOnlyList<PodManifest> Admit(DesiredState state, IReadOnlyList<PodManifest> pods)
    {
        ArgumentNullException.ThrowIfNull(pods);
        if (pods.FirstOrDefault(p => p.Addresses.Count > 0) is { } addressed)
        {
            throw new AgentInputException($"{addressed.File}: Pod/{addressed.Key}: status.podIPs: a container's addresses come from " +
                "its CNI attachment; leave status.podIPs out");
        }
        return pods;
    }

    public void Applied(DesiredState state, IReadOnlyList<PodManifest> pods)
    {
    }

    public void Removed(DesiredState state, IReadOnlyList<string> keys)
    {
    }

    /// <summary>A Pod object that came or went gives a running container its labels, or takes them back.</summary>
    public void ObjectsChanged(DesiredState state) => Sync(state);

    public void Rebuilt(DesiredState state, IReadOnlyList<PodManifest> pods,
        IReadOnlyDictionary<string, IReadOnlyList<IPAddress>> addresses) =>
        Sync(state);

    /// <summary>Makes the engine's pods exactly the attachments; unchanged pods are left alone.</summary>
    public void Sync(DesiredState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        var engine = state.Engine;
        var objects = state.ParsedObjects().Pods.ToDictionary(p => p.Key, StringComparer.Ordinal);
        var wanted = attachments.All.ToDictionary(a => a.PodKey, StringComparer.Ordinal);
        foreach (var key in engine.Endpoints.Select(e => e.Key).Where(k => !wanted.ContainsKey(k)).ToList())
        {
            engine.RemovePod(key);
        }
        foreach (var (key, attachment) in wanted)
        {
            var addresses = attachment.Addresses.Select(IPAddress.Parse).ToList();
            if (!attachment.Chained)
            {
                addresses.ForEach(state.Ipam.Reserve);
            }
            var pod = (objects.GetValueOrDefault(key) ?? FromRuntime(attachment)) with { Addresses = addresses };
            if (engine.FindEndpoint(key) is not { } existing || !SamePod(existing.Pod, pod))
            {
                engine.UpsertPod(pod);
            }
        }
    }

    /// <summary>Removes an attachment; an interface-mode one gives its addresses back to the IPAM.</summary>
    public void Forget(DesiredState state, CniAttachment attachment)
    {
        ArgumentNullException.ThrowIfNull(state);
        ArgumentNullException.ThrowIfNull(attachment);
        attachments.Remove(attachment);
        if (!attachment.Chained)
        {
            foreach (var address in attachment.Addresses)
            {
                state.Ipam.Release(IPAddress.Parse(address));
            }
        }
    }

    private static PodManifest FromRuntime(CniAttachment attachment) =>
        new(attachment.PodNamespace, attachment.PodName, attachment.RuntimeLabels ?? [], "default", [], [], "cni")
        {
            LabelsPending = attachment.RuntimeLabels is null,
        };

    private static bool SamePod(PodManifest a, PodManifest b) =>
        a.LabelsPending == b.LabelsPending && a.SameShape(b) && a.Addresses.SequenceEqual(b.Addresses)
        && a.Labels.Count == b.Labels.Count && a.Labels.All(l => b.Labels.TryGetValue(l.Key, out var v) && v == l.Value);
}
