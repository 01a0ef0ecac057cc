using Membrane.Policy.Api;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Tests.Workloads;

public sealed class PodPlacementTests
{
    /// <summary>Pods by name; "name@node" names its node.</summary>
    private static IReadOnlyList<PodManifest> Pods(params string[] names) => ManifestLoader.LoadText(string.Join("\n---\n",
        names.Select(Pod)), "t.yaml").OrThrow().Pods;

    private static string Pod(string name) => name.Split('@') is [var pod, var node]
        ? $"apiVersion: v1\nkind: Pod\nmetadata: {{name: {pod}}}\nspec: {{nodeName: {node}, containers: [{{name: c}}]}}"
        : $"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, labels: {{app: x}}}}\nspec: {{containers: [{{name: c}}]}}";

    [Fact]
    public void UnplacedPodsSpreadEvenlyAndTheirYamlNamesTheNode()
    {
        var running = new Dictionary<string, string> { ["default/old"] = "node-a" };
        var placed = PodPlacement.Place(Pods("p1", "p2", "p3", "pinned@node-b"), ["node-a", "node-b", "node-c"], running);
        // node-a has one pod, node-b gets the pinned one: p1 → node-c, p2 → node-a, p3 → node-b... counted as they go.
        Assert.Equal(["node-c", "node-a", "node-b", "node-b"], placed.Select(p => p.NodeName));
        foreach (var pod in placed)
        {
            var reparsed = ManifestLoader.LoadText(pod.SourceYaml, "stored").OrThrow().Pods.Single();
            Assert.Equal(pod.NodeName, reparsed.NodeName);
            Assert.True(reparsed.SameShape(pod));
        }
        Assert.Contains("app: x", placed[0].SourceYaml, StringComparison.Ordinal); // nothing else of the object changes
    }

    [Fact]
    public void ARunningPodKeepsItsNodeAndNoReadyNodeIsAClearError()
    {
        var running = new Dictionary<string, string> { ["default/p1"] = "node-b" };
        Assert.Equal("node-b", PodPlacement.Place(Pods("p1"), ["node-a", "node-b"], running).Single().NodeName);
        var e = Assert.Throws<InvalidOperationException>(() => PodPlacement.Place(Pods("p2"), [], running));
        Assert.Contains("Pod/default/p2: no node is ready", e.Message, StringComparison.Ordinal);
        var pinned = Pods("p3@node-z");
        Assert.Same(pinned, PodPlacement.Place(pinned, [], running)); // every pod names its node: nothing to place
    }
}
