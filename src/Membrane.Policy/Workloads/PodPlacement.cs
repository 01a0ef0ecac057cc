using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Workloads;

/// <summary>
/// Places pods that name no node (<c>spec.nodeName</c> absent) on ready nodes, spreading them evenly: each goes to
/// the node with the fewest pods, counting those placed before it (ties: the first name in order). The placement is
/// written into the pod's YAML, so the stored object says where it runs, as a scheduler's binding does.
/// </summary>
public static class PodPlacement
{
    /// <summary>
    /// The pods with every unplaced one placed. <paramref name="running"/>: the node of every pod already in the
    /// cluster (pods being replaced are counted once). Throws when a pod needs a node and none is ready.
    /// </summary>
    public static IReadOnlyList<PodManifest> Place(IReadOnlyList<PodManifest> pods, IReadOnlyCollection<string> readyNodes,
        IReadOnlyDictionary<string, string> running)
    {
        ArgumentNullException.ThrowIfNull(pods);
        ArgumentNullException.ThrowIfNull(readyNodes);
        ArgumentNullException.ThrowIfNull(running);
        if (pods.All(p => p.NodeName is not null))
        {
            return pods;
        }
        var load = readyNodes.Distinct(StringComparer.Ordinal).ToDictionary(n => n, _ => 0, StringComparer.Ordinal);
        var requested = pods.Select(p => p.Key).ToHashSet(StringComparer.Ordinal);
        foreach (var node in running.Where(r => !requested.Contains(r.Key)).Select(r => r.Value).Concat(pods.Select(p => p.NodeName)))
        {
            if (node is not null && load.TryGetValue(node, out var count))
            {
                load[node] = count + 1;
            }
        }
        var placed = new List<PodManifest>(pods.Count);
        foreach (var pod in pods)
        {
            if (pod.NodeName is not null)
            {
                placed.Add(pod);
                continue;
            }
            // A pod already running keeps its node (an apply that leaves nodeName out does not move it).
            var node = running.GetValueOrDefault(pod.Key);
            if (node is null)
            {
                if (load.Count == 0)
                {
                    throw new InvalidOperationException($"{pod.File}: Pod/{pod.Key}: no node is ready to run it (none has announced " +
                        "itself to the cluster store); name one in spec.nodeName or start a node");
                }
                node = load.OrderBy(l => l.Value).ThenBy(l => l.Key, StringComparer.Ordinal).First().Key;
                load[node]++;
            }
            placed.Add(WithNode(pod, node));
        }
        return placed;
    }

    /// <summary>The pod bound to <paramref name="node"/>: its YAML gains <c>spec.nodeName</c>.</summary>
    public static PodManifest WithNode(PodManifest pod, string node)
    {
        ArgumentNullException.ThrowIfNull(pod);
        ArgumentException.ThrowIfNullOrEmpty(node);
        var stream = new YamlStream();
        stream.Load(new StringReader(pod.SourceYaml));
        var root = (YamlMappingNode)stream.Documents[0].RootNode;
        if (!root.Children.TryGetValue(new YamlScalarNode("spec"), out var specNode) || specNode is not YamlMappingNode spec)
        {
            spec = new YamlMappingNode();
            root.Children[new YamlScalarNode("spec")] = spec;
        }
        spec.Children[new YamlScalarNode("nodeName")] = new YamlScalarNode(node);
        var writer = new StringWriter();
        new YamlStream(new YamlDocument(root)).Save(writer, assignAnchors: false);
        var text = writer.ToString().TrimEnd();
        text = text.EndsWith("...", StringComparison.Ordinal) ? text[..^3].TrimEnd() + "\n" : text + "\n";
        return pod with { NodeName = node, SourceYaml = text };
    }
}
