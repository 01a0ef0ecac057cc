using System.Text.Json;
using static Membrane.Agent.Tests.Cluster.LocalCluster;

namespace Membrane.Agent.Tests.Cluster;

/// <summary>
/// One change path on three nodes (client on node 1, web on node 2, other on node 3, native routing): a change
/// answers when every node that is up enforces it, so every probe below runs right after the change returns, with no
/// waiting of its own; a state one node cannot enforce leaves that node degraded and enforcing its last good state,
/// never stopped.
/// </summary>
[Collection(ClusterGroup.Name)]
public sealed class ChangePathTests : IDisposable
{
    private readonly LocalCluster _cluster = new();
    private readonly List<string> _files = [];

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
        spec: {nodeName: node-2, containers: [{name: w, ports: [{containerPort: 80}]}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: other, namespace: shop, labels: {app: other}}
        spec: {nodeName: node-3, containers: [{name: o}]}
        """;

    private const string AllowAll = """
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: allow-all}
        spec:
          endpointSelector: {}
          ingress: [{fromEndpoints: [{}]}, {fromCIDR: [0.0.0.0/0, "::/0"]}]
          egress: [{toEndpoints: [{}]}, {toCIDR: [0.0.0.0/0, "::/0"]}]
        """;

    private const string DenyPing = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: deny-ping, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingressDeny: [{icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]}]
        """;

    private const string DenyOther = """
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: deny-other}
        spec:
          endpointSelector: {matchLabels: {app: other}}
          egressDeny: [{toEndpoints: [{matchLabels: {app: web}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
        """;

    private static string[] Probe(string from, string to, string protocol, params string[] more) =>
        ["connectivity", "probe", "--from", from, "--to", to, "--protocol", protocol, .. more];

    private static readonly string[] Ping = Probe("shop/client", "shop/web", "icmp", "--icmp-type", "EchoRequest");

    private static readonly string[] Ping6 = Probe("shop/client", "shop/web", "icmpv6", "--icmp-type", "EchoRequest");

    private static readonly string[] Tcp80 = Probe("shop/client", "shop/web", "tcp", "--port", "80");

    private static readonly string[] OtherTcp80 = Probe("shop/other", "shop/web", "tcp", "--port", "80");

    private static readonly string[] OtherUdp53 = Probe("shop/other", "shop/web", "udp", "--port", "53");

    private string File(string yaml)
    {
        var file = Write(yaml);
        _files.Add(file);
        return file;
    }

    /// <summary>Runs a change on a node; it must succeed and say that all three nodes enforce it.</summary>
    private static void Change(int node, params string[] args)
    {
        var result = OnNode(node, args);
        Assert.True(result.Code == 0, $"membrane {string.Join(' ', args)} on node {node}: exit {result.Code}: {result.Err}{result.Out}");
        Assert.Contains("enforced by 3 node(s)", result.Out, StringComparison.Ordinal);
    }

    private static void Expect(int node, string[] probe, int code, string what)
    {
        var result = OnNode(node, probe);
        Assert.True(result.Code == code, $"{what}: exit {result.Code}, expected {code}: {result.Out}{result.Err}");
    }

    private static JsonElement ClusterStatus(int node)
    {
        using var json = Json(node, "status");
        return json.RootElement.GetProperty("cluster").Clone();
    }

    private void Up(int nodes, params string[] thirdNodeOptions)
    {
        for (var node = 1; node <= nodes; node++)
        {
            _cluster.Start(node, "native", node == 3 ? thirdNodeOptions : []);
        }
        // Setting up, not a change: every node has announced itself before the first change is made.
        Assert.True(Eventually(() => Enumerable.Range(1, nodes).All(n => ClusterStatus(n).GetProperty("nodes").GetArrayLength() == nodes)),
            "the nodes never saw each other");
    }

    private void AllAgentsRunning()
    {
        foreach (var node in new[] { 1, 2, 3 })
        {
            Assert.False(_cluster.Agent(node).HasExited, $"node {node}'s agent stopped");
        }
    }

    [Fact]
    public void AllowAllWithDenyRulesIsEnforcedOnEveryNodeWhenTheChangeReturns()
    {
        Up(3);
        Change(1, "apply", "-f", File(Workloads));
        Expect(1, Ping, 0, "no policy: ping across nodes right after apply");
        Change(3, "policy", "import", File(AllowAll));
        Expect(1, Ping, 0, "allow-all: ping");
        Change(2, "policy", "import", File(DenyPing));
        Change(1, "policy", "import", File(DenyOther));
        Expect(1, Ping, 1, "deny-ping: ping");
        Expect(1, Ping6, 1, "deny-ping: ping6");
        Expect(1, Tcp80, 0, "allow-all: TCP 80 from client");
        Expect(3, OtherTcp80, 1, "deny-other: TCP 80 from other");
        Expect(3, OtherUdp53, 0, "allow-all: UDP 53 from other");
        foreach (var node in new[] { 1, 2, 3 })
        {
            var status = ClusterStatus(node);
            Assert.Equal("ok", status.GetProperty("health").GetString());
            Assert.Equal(status.GetProperty("seenRevision").GetInt64(), status.GetProperty("enforcedRevision").GetInt64());
            // The world prefix is in each node's kernel ipcache once (the regression: it was there twice, and refused).
            using var ipcache = Json(node, "bpf", "ipcache", "list");
            Assert.Single(ipcache.RootElement.EnumerateArray(), e => e.GetProperty("prefix").GetString() == "0.0.0.0/0");
        }
        Change(2, "policy", "delete", "shop/deny-ping");
        Expect(1, Ping, 0, "deny-ping deleted: ping");
        Change(3, "delete", "-f", File(Workloads));
        AllAgentsRunning();
    }

    [Fact]
    public void ANodeThatCannotEnforceAStateIsDegradedKeepsItsLastStateAndConverges()
    {
        // Node 3's policy map holds 64 entries: a policy with 100 denied ports for every pod fits on nodes 1 and 2 only.
        Up(3, "--policy-map-entries", "64");
        Change(1, "apply", "-f", File(Workloads));
        Change(1, "policy", "import", File(AllowAll));
        Change(1, "policy", "import", File(DenyOther));
        var other1000 = Probe("shop/other", "shop/web", "tcp", "--port", "1000");
        Expect(3, OtherTcp80, 1, "deny-other before");
        Expect(3, other1000, 0, "TCP 1000 before");
        var ports = string.Join(", ", Enumerable.Range(1000, 100).Select(p => $"{{port: \"{p}\", protocol: TCP}}"));
        var big = File($$"""
            apiVersion: cilium.io/v2
            kind: CiliumClusterwideNetworkPolicy
            metadata: {name: many-ports}
            spec:
              endpointSelector: {}
              egressDeny: [{toEndpoints: [{}], toPorts: [{ports: [{{ports}}]}]}]
            """);
        var result = OnNode(1, "policy", "import", big, "--timeout", "10s");
        Assert.True(result.Code == 3, $"expected exit 3 (not enforced everywhere): {result.Code} {result.Out}{result.Err}");
        Assert.Contains("node node-3 has not enforced", result.Err, StringComparison.Ordinal);
        Assert.Contains("policy map", result.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("node node-1", result.Err, StringComparison.Ordinal);
        Assert.DoesNotContain("node node-2", result.Err, StringComparison.Ordinal);

        // Node 3 says why, keeps enforcing its last good state (deny-other, and not many-ports) and keeps serving.
        var status = ClusterStatus(3);
        Assert.Equal("degraded", status.GetProperty("health").GetString());
        var reasons = string.Join(" ", status.GetProperty("reasons").EnumerateArray().Select(r => r.GetString()));
        Assert.Contains("CiliumClusterwideNetworkPolicy/many-ports", reasons, StringComparison.Ordinal);
        Assert.Contains("policy map", reasons, StringComparison.Ordinal);
        Assert.True(status.GetProperty("enforcedRevision").GetInt64() < status.GetProperty("seenRevision").GetInt64() ||
            status.GetProperty("lacks").GetArrayLength() > 0, "node 3 reports the revision enforced");
        Expect(3, OtherTcp80, 1, "node 3 degraded: deny-other still enforced");
        Expect(3, other1000, 0, "node 3 degraded: many-ports not half-applied");
        Assert.Equal("ok", ClusterStatus(1).GetProperty("health").GetString());
        Expect(1, Probe("shop/client", "shop/web", "tcp", "--port", "1000"), 1, "node 1 enforces many-ports");
        Expect(1, Tcp80, 0, "node 1: TCP 80 still allowed");

        // Removing it: every node enforces the result, node 3 is healthy again.
        Change(2, "policy", "delete", "many-ports");
        Assert.Equal("ok", ClusterStatus(3).GetProperty("health").GetString());
        Expect(3, OtherTcp80, 1, "after recovery: deny-other");
        Expect(3, other1000, 0, "after recovery: TCP 1000");
        Expect(1, Probe("shop/client", "shop/web", "tcp", "--port", "1000"), 0, "after recovery: TCP 1000 from client");
        AllAgentsRunning();
    }

    [Fact]
    public void ExitCodesTellAnswersFromFailures()
    {
        Up(2);
        Change2(1, "apply", "-f", File(Workloads.Replace("nodeName: node-3", "nodeName: node-2", StringComparison.Ordinal)));
        // A probe of a pod that does not exist is an error (2), never "denied" (1).
        Assert.Equal(2, OnNode(1, Probe("shop/client", "shop/nothing", "tcp", "--port", "80")).Code);
        Assert.Equal(2, OnNode(1, "apply", "-f", File(Workloads), "--timeout", "soon").Code);
        var noWait = OnNode(1, "policy", "import", File(DenyPing), "--no-wait");
        Assert.True(noWait.Code == 0, noWait.Err);
        Assert.DoesNotContain("enforced by", noWait.Out, StringComparison.Ordinal);
    }

    [Fact]
    public async Task AForgedIpcacheEntryIsNotBelievedAndStatusNamesIt()
    {
        Up(2);
        Change2(1, "apply", "-f", File(Workloads.Replace("nodeName: node-3", "nodeName: node-2", StringComparison.Ordinal)));
        // Anyone who can write to the store claims an address in node 2's pod range for shop/web, without node 2's lease.
        using (var etcd = _cluster.Etcd.Connect())
        {
            await etcd.PutAsync(Kvstore.ClusterIpCache.Prefix + "node-2/10.212.0.99", "300 node-2 10.250.0.2 shop/web");
        }
        Assert.True(Eventually(() => ClusterStatus(1).GetProperty("reasons").EnumerateArray().Any(r =>
            r.GetString()!.Contains("membrane/ipcache/node-2/10.212.0.99 (shop/web): not held by node node-2's lease",
                StringComparison.Ordinal))),
            "node 1 does not say it ignores the forged entry");
        var ipcache = OnNode(1, "bpf", "ipcache", "list");
        Assert.DoesNotContain("10.212.0.99", ipcache.Out, StringComparison.Ordinal);
        using (var web = Json(1, "endpoint", "get", "shop/web"))
        {
            Assert.Contains(web.RootElement.GetProperty("iPv4").GetString()!, ipcache.Out, StringComparison.Ordinal); // the genuine one
        }
        Expect(1, Tcp80, 0, "TCP 80 to the genuine address");
    }

    [Fact]
    public async Task ObjectsWrittenToTheStoreAroundApplyAreNotBelievedAndStopNothing()
    {
        Up(2);
        Change2(1, "apply", "-f", File(Workloads.Replace("nodeName: node-3", "nodeName: node-2", StringComparison.Ordinal)));
        using (var etcd = _cluster.Etcd.Connect())
        {
            await etcd.PutAsync("membrane/objects/Pod/shop/broken", "kind: Pod\nmetadata: {name: [unclosed");
            // A valid allow-all policy stored under another policy's key: it would replace that one. Not believed.
            await etcd.PutAsync("membrane/objects/CiliumNetworkPolicy/shop/harmless", AllowAll.Replace("allow-all", "sneaky",
                StringComparison.Ordinal).Replace("CiliumClusterwideNetworkPolicy", "CiliumNetworkPolicy", StringComparison.Ordinal)
                .Replace("metadata: {name: sneaky}", "metadata: {name: sneaky, namespace: shop}", StringComparison.Ordinal));
        }
        foreach (var node in new[] { 1, 2 })
        {
            bool Named()
            {
                var reasons = string.Join(" ", ClusterStatus(node).GetProperty("reasons").EnumerateArray().Select(r => r.GetString()));
                return reasons.Contains("membrane/objects/Pod/shop/broken", StringComparison.Ordinal) && reasons.Contains(
                    "membrane/objects/CiliumNetworkPolicy/shop/harmless: holds CiliumNetworkPolicy/shop/sneaky", StringComparison.Ordinal);
            }
            Assert.True(Eventually(Named), $"node {node} does not name the objects it does not believe");
        }
        // The nodes go on enforcing every other change, and the sneaky allow-all is not among them.
        Change2(2, "policy", "import", File(DenyPing));
        Expect(1, Ping, 1, "deny-ping enforced past the objects not believed");
        // A deny-only policy puts web's ingress under policy: TCP 80 is denied, as it would not be were "sneaky" believed.
        Expect(1, Tcp80, 1, "TCP 80: no allow policy is believed");
        Assert.False(_cluster.Agent(1).HasExited || _cluster.Agent(2).HasExited, "an agent stopped");
    }

    private static void Change2(int node, params string[] args)
    {
        var result = OnNode(node, args);
        Assert.True(result.Code == 0, $"membrane {string.Join(' ', args)}: exit {result.Code}: {result.Err}{result.Out}");
        Assert.Contains("enforced by 2 node(s)", result.Out, StringComparison.Ordinal);
    }

    public void Dispose()
    {
        _cluster.Dispose();
        foreach (var file in _files)
        {
            System.IO.File.Delete(file);
        }
    }
}
