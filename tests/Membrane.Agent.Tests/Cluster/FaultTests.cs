using System.Diagnostics;
using Etcdserverpb;
using Xunit.Abstractions;
using static Membrane.Agent.Tests.Cluster.LocalCluster;

namespace Membrane.Agent.Tests.Cluster;

/// <summary>
/// The store's and the agents' faults with real traffic between two nodes (client on node 1, web on node 2, native
/// routing): echo is allowed, TCP 81 denied, before, during and after each fault; the time to converge is measured
/// and written to the test output.
/// </summary>
[Collection(ClusterGroup.Name)]
public sealed class FaultTests(ITestOutputHelper log) : IDisposable
{
    private readonly LocalCluster _cluster = new();
    private readonly List<string> _files = [];

    private static readonly string Workloads = Shop("node-1", "node-2") + """
        ---
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: "80", protocol: TCP}]}]
          - fromEndpoints: [{matchLabels: {app: client}}]
            icmps: [{fields: [{type: 8}]}]
        """;

    private static string Policy(string name) => $$$"""
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: {{{name}}}, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
        """;

    private static readonly string[] Echo = ["connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol", "icmp",
        "--icmp-type", "EchoRequest"];

    private static readonly string[] Tcp80 = ["connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol", "tcp",
        "--port", "80"];

    private static readonly string[] Tcp81 = ["connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol", "tcp",
        "--port", "81"];

    private string File(string yaml)
    {
        var file = Write(yaml);
        _files.Add(file);
        return file;
    }

    private void Up(params string[] extra)
    {
        _cluster.Start(1, "native", extra);
        _cluster.Start(2, "native", extra);
        Assert.Equal(0, OnNode(1, "apply", "-f", File(Workloads)).Code);
        Assert.True(Eventually(1, 0, Echo), "no echo between the nodes");
        AllowedAndDeniedHold("at the start");
    }

    /// <summary>Echo and TCP 80 allowed, TCP 81 denied: the policy in force, seen by real traffic.</summary>
    private static void AllowedAndDeniedHold(string when)
    {
        Assert.True(OnNode(1, Echo).Code == 0, $"echo not allowed {when}");
        Assert.True(OnNode(1, Tcp80).Code == 0, $"TCP 80 not allowed {when}");
        Assert.True(OnNode(1, Tcp81).Code == 1, $"TCP 81 not denied {when}");
    }

    private static string Health(int node)
    {
        using var json = Json(node, "status");
        return json.RootElement.GetProperty("cluster").GetProperty("health").GetString()!;
    }

    private static int RemoteAddresses(int node)
    {
        using var json = Json(node, "status");
        return json.RootElement.GetProperty("cluster").GetProperty("remoteEndpoints").GetInt32();
    }

    private double Measure(string what, Func<bool> converged, int seconds = 60)
    {
        var watch = Stopwatch.StartNew();
        Assert.True(Eventually(converged, seconds), $"{what}: not within {seconds} s");
        log.WriteLine($"{what}: {watch.Elapsed.TotalSeconds:F2} s");
        return watch.Elapsed.TotalSeconds;
    }

    [Fact]
    public void LosingOneMemberOfThreeIsNotVisible()
    {
        Up();
        foreach (var member in Enumerable.Range(0, 3))
        {
            _cluster.Etcd.Kill(member);
            AllowedAndDeniedHold($"with etcd member {member} down");
            var name = $"deny-{member}";
            var imported = OnNode(1, "policy", "import", File(Policy(name)));
            Assert.True(imported.Code == 0, $"import on node 1 with member {member} down: {imported.Err}{imported.Out}");
            Measure($"member {member} down: a policy imported on node 1 enforced on node 2", () => OnNode(1, Tcp80).Code == 1);
            var deleted = OnNode(2, "policy", "delete", $"shop/{name}");
            Assert.True(deleted.Code == 0, $"delete on node 2 with member {member} down: {deleted.Err}{deleted.Out}");
            Assert.True(Eventually(1, 0, Tcp80));
            Assert.Equal("ok", Health(1));
            _cluster.Etcd.StartAll();
        }
    }

    [Fact]
    public void LosingQuorumKeepsEnforcementAndChangesFailClearly_AllConvergeAfter()
    {
        Up("--lease-ttl", "4");
        _cluster.Etcd.Kill(0);
        _cluster.Etcd.Kill(1);
        Measure("quorum lost: status says degraded", () => Health(1) == "degraded" && Health(2) == "degraded", 20);
        using (var status = Json(1, "status"))
        {
            var reasons = string.Join(" ", status.RootElement.GetProperty("cluster").GetProperty("reasons").EnumerateArray()
                .Select(r => r.GetString()));
            Assert.Contains("does not answer with a quorum", reasons, StringComparison.Ordinal);
        }
        AllowedAndDeniedHold("without quorum");
        var refused = OnNode(1, "policy", "import", File(Policy("during-outage")));
        Assert.NotEqual(0, refused.Code);
        Assert.Contains("cluster store", refused.Err, StringComparison.Ordinal);
        Assert.True(OnNode(1, Tcp80).Code == 0, "a change that failed was enforced anyway");
        // Longer than the nodes' leases: their keys are revoked when the store is back, and written again.
        Thread.Sleep(TimeSpan.FromSeconds(5));
        AllowedAndDeniedHold("without quorum, after the leases' time to live");

        var watch = Stopwatch.StartNew();
        _cluster.Etcd.StartAll();
        Measure("quorum back: both nodes healthy", () => Health(1) == "ok" && Health(2) == "ok");
        Measure("quorum back: each node holds the other's pod addresses again", () => RemoteAddresses(1) == 2 && RemoteAddresses(2) == 2);
        log.WriteLine($"recovery after quorum returned: {watch.Elapsed.TotalSeconds:F2} s");
        // The refused change was not half-applied: both nodes agree on whether the store took it.
        var policies = new[] { 1, 2 }.Select(n => OnNode(n, "policy", "get").Out.Contains("during-outage",
            StringComparison.Ordinal)).ToList();
        Assert.Equal(policies[0], policies[1]);
        if (policies[0])
        {
            Assert.Equal(0, OnNode(1, "policy", "delete", "shop/during-outage").Code);
        }
        Assert.True(Eventually(1, 0, Tcp80));
        AllowedAndDeniedHold("after quorum returned");
        Assert.Equal(0, OnNode(2, "policy", "import", File(Policy("after"))).Code);
        Measure("after recovery: a change on node 2 enforced on node 1's traffic", () => OnNode(1, Tcp80).Code == 1);
    }

    [Fact]
    public void AKilledAgentsPodsKeepEnforcement_OthersForgetItAfterItsLease_ItComesBackUnchanged()
    {
        Up("--lease-ttl", "6");
        using var before = Json(2, "endpoint", "get", "shop/web");
        var identity = before.RootElement.GetProperty("identity").GetUInt32();
        _cluster.Kill(2);
        // Node 2's datapath still enforces web's policy without its agent.
        AllowedAndDeniedHold("with node 2's agent killed");
        Measure("node 2 killed: node 1 forgets its pod addresses after its lease", () => RemoteAddresses(1) == 0, 30);

        _cluster.Start(2, "native", "--lease-ttl", "6");
        Measure("node 2 restarted: node 1 knows its pods again", () => RemoteAddresses(1) == 2);
        using var after = Json(2, "endpoint", "get", "shop/web");
        Assert.Equal(identity, after.RootElement.GetProperty("identity").GetUInt32());
        Assert.True(Eventually(1, 0, Echo));
        AllowedAndDeniedHold("after node 2's agent came back");
    }

    [Fact]
    public async Task AWatchBehindACompactionListsAgainAndConverges()
    {
        Up();
        // Node 2's agent stops reading; node 1 changes the policy several times and etcd compacts its history.
        Run("kill", "-STOP", $"{_cluster.Agent(2).Id}");
        try
        {
            for (var i = 0; i < 5; i++)
            {
                Assert.Equal(0, OnNode(1, "policy", "import", File(Policy($"churn-{i}"))).Code);
                Assert.Equal(0, OnNode(1, "policy", "delete", $"shop/churn-{i}").Code);
            }
            Assert.Equal(0, OnNode(1, "policy", "import", File(Policy("final"))).Code);
            using var etcd = _cluster.Etcd.Connect();
            var key = Kvstore.EtcdConnection.Bytes("membrane/");
            var revision = (await etcd.Client.GetAsync(new RangeRequest { Key = key })).Header.Revision;
            await etcd.Client.CompactAsync(new CompactionRequest { Revision = revision, Physical = true });
        }
        finally
        {
            Run("kill", "-CONT", $"{_cluster.Agent(2).Id}");
        }
        Measure("after compaction: node 2 enforces the final state", () => OnNode(1, Tcp80).Code == 1
            && OnNode(2, "policy", "get").Out.Contains("name: final", StringComparison.Ordinal)
            && !OnNode(2, "policy", "get").Out.Contains("churn", StringComparison.Ordinal));
    }

    public void Dispose()
    {
        foreach (var file in _files)
        {
            System.IO.File.Delete(file);
        }
        _cluster.Dispose();
    }
}
