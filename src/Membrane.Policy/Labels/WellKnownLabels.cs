namespace Membrane.Policy.Labels;

/// <summary>Labels every pod carries beside its own, derived from its namespace, service account and cluster.</summary>
public static class WellKnownLabels
{
    public const string PodNamespace = "io.kubernetes.pod.namespace";
    public const string NamespaceLabelPrefix = "io.cilium.k8s.namespace.labels.";
    public const string ServiceAccount = "io.cilium.k8s.policy.serviceaccount";
    public const string Cluster = "io.cilium.k8s.policy.cluster";
    public const string DefaultCluster = "default";

    /// <summary>Kubernetes' own namespace-name label, which namespaces carry implicitly.</summary>
    public const string NamespaceName = "kubernetes.io/metadata.name";

    /// <summary>Labels that change with every rollout and would make each pod its own identity.</summary>
    public static readonly IReadOnlySet<string> ExcludedFromIdentity = new HashSet<string>(StringComparer.Ordinal)
    {
        "pod-template-hash", "controller-revision-hash", "pod-template-generation",
        "statefulset.kubernetes.io/pod-name", "batch.kubernetes.io/controller-uid", "controller-uid",
    };

    public static bool IsNamespaceKey(string key)
    {
        ArgumentNullException.ThrowIfNull(key);
        return key == PodNamespace || key.StartsWith(NamespaceLabelPrefix, StringComparison.Ordinal);
    }
}
