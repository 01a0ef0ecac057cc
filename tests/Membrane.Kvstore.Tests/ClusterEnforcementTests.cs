using System.Net;

namespace Membrane.Kvstore.Tests;

/// <summary>What each node enforces, on a real three-member etcd: a change is enforced when every announced node reports it.</summary>
public sealed class ClusterEnforcementTests : IDisposable
{
    private readonly EtcdCluster _etcd = new();

    [Fact]
    public void AReportReadsBackAndAMalformedOneIsNotTrusted()
    {
        var report = new NodeEnforcement("node-a", 41, 42, ["the addresses of Pod/shop/web (on node-b)", "line\nbreak"]);
        var parsed = ClusterEnforcement.Parse(ClusterEnforcement.Prefix + "node-a", ClusterEnforcement.Format(report));
        Assert.NotNull(parsed);
        Assert.Equal((41L, 42L), (parsed.Enforced, parsed.Seen));
        Assert.Equal(["the addresses of Pod/shop/web (on node-b)", "line break"], parsed.Lacks);
        Assert.Null(ClusterEnforcement.Parse(ClusterEnforcement.Prefix + "node-a", "-1 4"));
        Assert.Null(ClusterEnforcement.Parse(ClusterEnforcement.Prefix + "node-a", "everything"));
        Assert.Null(ClusterEnforcement.Parse("membrane/other/node-a", "4 4"));
    }

    [Fact]
    public async Task TheWaitEndsWhenTheLastUpNodeReportsAndANodeThatWentIsNotWaitedFor()
    {
        using var etcd = _etcd.Connect();
        await using var sessionA = new NodeSession(etcd, TimeSpan.FromSeconds(30));
        await sessionA.StartAsync();
        var sessionB = new NodeSession(etcd, TimeSpan.FromSeconds(30));
        await sessionB.StartAsync();
        await new ClusterIpCache(etcd, sessionA, "node-a", IPAddress.Parse("192.168.50.1")).AnnounceAsync([IPNetwork.Parse("10.1.0.0/16")]);
        await new ClusterIpCache(etcd, sessionB, "node-b", IPAddress.Parse("192.168.50.2")).AnnounceAsync([IPNetwork.Parse("10.2.0.0/16")]);
        await ClusterEnforcement.ReportAsync(sessionA, new NodeEnforcement("node-a", 50, 50, []));
        await ClusterEnforcement.ReportAsync(sessionB, new NodeEnforcement("node-b", 40, 50, ["not enforced: the policy map is full"]));

        var (enforced, nodes) = await ClusterEnforcement.WaitAsync(etcd, 50, TimeSpan.FromMilliseconds(300));
        Assert.False(enforced);
        Assert.Equal(["node-a", "node-b"], nodes.Select(n => n.Node));
        Assert.Equal(["not enforced: the policy map is full"], nodes[1].Lacks);

        // A wait in progress ends as soon as node-b reports the revision (woken by the watch, well before its deadline).
        var waiting = ClusterEnforcement.WaitAsync(etcd, 50, TimeSpan.FromSeconds(20));
        await ClusterEnforcement.ReportAsync(sessionB, new NodeEnforcement("node-b", 50, 50, []));
        var done = await waiting.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(done.Enforced);

        // node-b goes (its lease revoked: its announcement and report with it); a later revision waits on node-a only.
        waiting = ClusterEnforcement.WaitAsync(etcd, 60, TimeSpan.FromSeconds(20));
        await sessionB.RevokeAsync();
        await ClusterEnforcement.ReportAsync(sessionA, new NodeEnforcement("node-a", 60, 60, []));
        done = await waiting.WaitAsync(TimeSpan.FromSeconds(10));
        Assert.True(done.Enforced);
        Assert.Equal(["node-a"], done.Nodes.Select(n => n.Node));
    }

    public void Dispose() => _etcd.Dispose();
}
