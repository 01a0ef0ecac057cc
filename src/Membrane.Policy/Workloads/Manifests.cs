using System.Net;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Workloads;

/// <summary>A v1 Namespace: a name and labels.</summary>
public sealed record NamespaceManifest(string Name, IReadOnlyDictionary<string, string> Labels, string File)
{
    /// <summary>The object as YAML, for persistence.</summary>
    public string SourceYaml { get; init; } = "";
}

/// <summary>A declared container port; its name is what named ports in policies resolve to.</summary>
public sealed record ContainerPort(string? Name, int Port, PortProtocol Protocol);

/// <summary>A v1 Pod as the sandbox and the policy engine see it.</summary>
public sealed record PodManifest(
    string Namespace,
    string Name,
    IReadOnlyDictionary<string, string> Labels,
    string ServiceAccount,
    IReadOnlyList<ContainerPort> Ports,
    IReadOnlyList<IPAddress> Addresses,
    string File)
{
    public string Key => $"{Namespace}/{Name}";

    /// <summary>The object as YAML, for persistence.</summary>
    public string SourceYaml { get; init; } = "";

    /// <summary>
    /// A container whose labels are not known yet (no Pod object, nothing from its runtime): it has the reserved
    /// <c>init</c> identity until they arrive, and policies name it with the <c>init</c> entity.
    /// </summary>
    public bool LabelsPending { get; init; }

    /// <summary><c>spec.nodeName</c>: the node that runs the pod (cluster mode); null when not given.</summary>
    public string? NodeName { get; init; }

    /// <summary>Same pod apart from labels: the sandbox can keep it running and only re-identify it.</summary>
    public bool SameShape(PodManifest other)
    {
        ArgumentNullException.ThrowIfNull(other);
        return Key == other.Key && ServiceAccount == other.ServiceAccount && NodeName == other.NodeName && Ports.SequenceEqual(other.Ports);
    }
}

/// <summary>Everything one load produced: policies and workloads, all validated.</summary>
public sealed record ManifestSet(
    IReadOnlyList<PolicyDocument> Policies,
    IReadOnlyList<NamespaceManifest> Namespaces,
    IReadOnlyList<PodManifest> Pods)
{
    public static ManifestSet Empty { get; } = new([], [], []);
}
