namespace Membrane.Agent.Cni;

/// <summary>
/// One container interface a runtime handed to the agent through the CNI plugin, keyed by container id + interface
/// name as the runtime keys it. In interface mode the agent made the interface (<see cref="Chained"/> false); in
/// chained mode an earlier plugin did and <see cref="Addresses"/> come from its result. <see cref="RuntimeLabels"/> are
/// the labels the runtime itself reported (the CRI's pod sandbox), used when no Pod object names the pod.
/// </summary>
public sealed record CniAttachment(
    string ContainerId, string InterfaceName, string Netns, string PodNamespace, string PodName, bool Chained,
    IReadOnlyList<string> Addresses)
{
    public Dictionary<string, string>? RuntimeLabels { get; init; }

    /// <summary>The network (the configuration's <c>name</c>) it was added for: a GC touches only its own network's.</summary>
    public string? Network { get; init; }

    /// <summary>The endpoint's key: <c>namespace/name</c>, as for sandbox pods.</summary>
    public string PodKey => $"{PodNamespace}/{PodName}";

    public bool Is(string containerId, string interfaceName) =>
        ContainerId == containerId && InterfaceName == interfaceName;
}

/// <summary>
/// The attachments the agent serves: one per pod (a pod's endpoint is its attachment's interface). Persisted in the
/// state file so a restarted agent adopts them. Not thread-safe: the agent's lock serialises it.
/// </summary>
public sealed class CniAttachments
{
    private readonly Dictionary<string, CniAttachment> _byPod = new(StringComparer.Ordinal);

    public IReadOnlyCollection<CniAttachment> All => _byPod.Values;

    public CniAttachment? ForPod(string podKey) => _byPod.GetValueOrDefault(podKey);

    public CniAttachment? Find(string containerId, string interfaceName) =>
        _byPod.Values.FirstOrDefault(a => a.Is(containerId, interfaceName));

    public void Put(CniAttachment attachment)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        _byPod[attachment.PodKey] = attachment;
    }

    public bool Remove(CniAttachment attachment)
    {
        ArgumentNullException.ThrowIfNull(attachment);
        return _byPod.Remove(attachment.PodKey);
    }

    public List<CniAttachment> Snapshot() => [.. _byPod.Values];

    public void Restore(IEnumerable<CniAttachment> attachments)
    {
        ArgumentNullException.ThrowIfNull(attachments);
        _byPod.Clear();
        foreach (var attachment in attachments)
        {
            _byPod[attachment.PodKey] = attachment;
        }
    }
}
