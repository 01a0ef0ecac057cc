using System.Diagnostics;

namespace Membrane.Agent.Tests.Cluster;

/// <summary>
/// Two agents in cluster mode on a real three-member etcd, each with its own sandbox (a simulated node): objects
/// applied or imported through one node are enforced on the other; a node runs only the pods placed on it.
/// </summary>
[Collection(ClusterGroup.Name)]
public sealed class ClusterModeTests : IDisposable
{
    private readonly LocalCluster _cluster = new();

    private const string Workloads = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: shop}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: client, namespace: shop, labels: {app: client}}
        spec: {nodeName: node-1, containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, namespace: shop, labels: {app: web}}
        spec: {nodeName: node-1, containers: [{name: w, ports: [{containerPort: 80}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: other, namespace: shop, labels: {app: other}}
        spec: {nodeName: node-2, containers: [{name: o}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web2, namespace: shop, labels: {app: web}}
        spec: {nodeName: node-2, containers: [{name: w, ports: [{containerPort: 80}]}]}
        """;

    private const string L4Only = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
        """;

    private void StartNode(int node) => _cluster.Start(node);

    private static (int Code, string Out, string Err) Cli(int node, params string[] args) => LocalCluster.OnNode(node, args);

    private static string Write(string yaml) => LocalCluster.Write(yaml);

    private static bool Eventually(int node, int expected, params string[] args) => LocalCluster.Eventually(node, expected, args);

    private static uint Identity(int node, string pod)
    {
        var output = Cli(node, "endpoint", "get", pod, "-o", "json");
        Assert.True(output.Code == 0, output.Err);
        using var json = System.Text.Json.JsonDocument.Parse(output.Out);
        return json.RootElement.GetProperty("identity").GetUInt32();
    }

    private static string[] Probe(string protocol, params string[] more) =>
        ["connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol", protocol, .. more];

    [Fact]
    public void ObjectsAppliedOnOneNodeAreEnforcedOnTheOther()
    {
        StartNode(1);
        StartNode(2);
        var workloads = Write(Workloads);
        var policy = Write(L4Only);
        try
        {
            // Applied through node 2: node 1 runs client and web, node 2 runs other.
            var applied = Cli(2, "apply", "-f", workloads);
            Assert.True(applied.Code == 0, applied.Out + applied.Err);
            Assert.True(Eventually(1, 0, "endpoint", "get", "shop/web"), "node 1 never ran shop/web");
            Assert.Equal(0, Cli(2, "endpoint", "get", "shop/other").Code);
            var remote = Cli(2, "endpoint", "get", "shop/web", "-o", "json"); // not this node's pod: shown as a peer, with its node
            Assert.True(remote.Code == 0, remote.Err);
            using (var peer = System.Text.Json.JsonDocument.Parse(remote.Out))
            {
                Assert.True(peer.RootElement.GetProperty("remote").GetBoolean());
                Assert.Equal("node-1", peer.RootElement.GetProperty("node").GetString());
            }
            Assert.True(Eventually(1, 0, Probe("icmp", "--icmp-type", "EchoRequest")), "ping before any policy");
            // Equal labels, equal identity numbers on both nodes: they come from the store.
            Assert.Equal(Identity(1, "shop/web"), Identity(2, "shop/web2"));
            Assert.NotEqual(Identity(1, "shop/client"), Identity(2, "shop/other"));

            // The L4 policy, imported on node 2, drops ping between node 1's pods; TCP 80 stays allowed.
            Assert.Equal(0, Cli(2, "policy", "import", policy).Code);
            Assert.True(Eventually(1, 1, Probe("icmp", "--icmp-type", "EchoRequest")), "node 1 never enforced node 2's policy");
            Assert.Equal(0, Cli(1, Probe("tcp", "--port", "80")).Code);

            // Deleted on node 1: gone on both.
            Assert.Equal(0, Cli(1, "policy", "delete", "web").Code);
            Assert.True(Eventually(1, 0, Probe("icmp", "--icmp-type", "EchoRequest")));
            var watch = Stopwatch.StartNew();
            while (Cli(2, "policy", "get").Out.Contains("name: web", StringComparison.Ordinal) && watch.Elapsed < TimeSpan.FromSeconds(30))
            {
                Thread.Sleep(100);
            }
            Assert.DoesNotContain("name: web", Cli(2, "policy", "get").Out, StringComparison.Ordinal);
        }
        finally
        {
            Cli(1, "delete", "-f", workloads);
            File.Delete(workloads);
            File.Delete(policy);
        }
    }

    [Fact]
    public async Task PodsWithoutANodeArePlacedEvenlyAndThePlacementIsStored()
    {
        StartNode(1);
        StartNode(2);
        var unplaced = Write(string.Join("\n---\n", Enumerable.Range(1, 4).Select(i =>
            $"apiVersion: v1\nkind: Pod\nmetadata: {{name: loose{i}, namespace: default, labels: {{app: loose}}}}\n" +
            "spec: {containers: [{name: c}]}")));
        try
        {
            // Both nodes must have announced themselves before both can be chosen.
            Assert.True(LocalCluster.Eventually(() => Cli(1, "node", "list").Out.Contains("node-2", StringComparison.Ordinal)));
            var applied = Cli(1, "apply", "-f", unplaced);
            Assert.True(applied.Code == 0, applied.Err + applied.Out);
            using var etcd = _cluster.Etcd.Connect();
            var stored = (await new Kvstore.ClusterObjects(etcd).LoadAsync()).Objects;
            var nodes = Enumerable.Range(1, 4).Select(i => stored[$"Pod/default/loose{i}"].Yaml).Select(yaml =>
                yaml.Contains("nodeName: node-1", StringComparison.Ordinal) ? 1 : yaml.Contains("nodeName: node-2",
                    StringComparison.Ordinal)
                    ? 2 : 0).ToList();
            Assert.Equal([1, 1, 2, 2], nodes.Order());
            // Each node runs the two it was given.
            foreach (var node in new[] { 1, 2 })
            {
                Assert.True(LocalCluster.Eventually(() => Cli(node, "status").Out.Contains("Endpoints:   2 pods",
                    StringComparison.Ordinal)),
                    $"node {node} does not run two pods");
            }
        }
        finally
        {
            Cli(1, "delete", "-f", unplaced);
            File.Delete(unplaced);
        }
    }

    public void Dispose() => _cluster.Dispose();
}

/// <summary>
/// The cluster tests, one at a time. They run beside the sandbox group (their own namespaces, prefixes mbcluN and mbcN,
/// pin directories, etcd ports and underlay), which halves the suite's wall clock; not beside the CNI group, whose
/// prefix mbcni a cluster test's check for leftover mbc* namespaces would see.
/// </summary>
[CollectionDefinition(Name)]
public sealed class ClusterGroup
{
    public const string Name = "cluster";
}
