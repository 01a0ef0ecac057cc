using System.Net;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;

namespace Membrane.Policy.Workloads;

/// <summary>A pod as the policy engine sees it: its labels (own and derived), identity and addresses.</summary>
public sealed record Endpoint(PodManifest Pod, LabelSet Labels, SecurityIdentity Identity, IReadOnlyList<IPAddress> Addresses)
{
    public string Key => Pod.Key;

    public IPAddress? Address(System.Net.Sockets.AddressFamily family) => Addresses.FirstOrDefault(a => a.AddressFamily == family);

    /// <summary>The labels a pod carries: its own (minus rollout labels) and those derived from its namespace.</summary>
    public static LabelSet DeriveLabels(PodManifest pod, NamespaceManifest? ns, string cluster = WellKnownLabels.DefaultCluster)
    {
        ArgumentNullException.ThrowIfNull(pod);
        if (pod.LabelsPending)
        {
            return ReservedIdentities.InitIdentity.Labels;
        }
        var labels = new List<Label>();
        foreach (var (key, value) in pod.Labels)
        {
            if (!WellKnownLabels.ExcludedFromIdentity.Contains(key))
            {
                labels.Add(new Label(LabelSource.Kubernetes, key, value));
            }
        }
        labels.Add(new Label(LabelSource.Kubernetes, WellKnownLabels.PodNamespace, pod.Namespace));
        labels.Add(new Label(LabelSource.Kubernetes, WellKnownLabels.NamespaceLabelPrefix + WellKnownLabels.NamespaceName, pod.Namespace));
        foreach (var (key, value) in ns?.Labels ?? new Dictionary<string, string>())
        {
            labels.Add(new Label(LabelSource.Kubernetes, WellKnownLabels.NamespaceLabelPrefix + key, value));
        }
        labels.Add(new Label(LabelSource.Kubernetes, WellKnownLabels.ServiceAccount, pod.ServiceAccount));
        labels.Add(new Label(LabelSource.Kubernetes, WellKnownLabels.Cluster, cluster));
        return new LabelSet(labels);
    }
}
