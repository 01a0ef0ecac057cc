using System.Net;

namespace Membrane.Kvstore.Tests;

/// <summary>Every node's pod addresses on its lease, followed by the others, on a real three-member etcd.</summary>
public sealed class ClusterIpCacheTests : IDisposable
{
    private readonly EtcdCluster _etcd = new();

    /// <summary>Reads views until one satisfies <paramref name="condition"/> (20 s deadline); that view.</summary>
    private static async Task<IReadOnlyList<RemoteEndpoint>> ViewWhere(IAsyncEnumerator<IReadOnlyList<RemoteEndpoint>> views,
        Func<IReadOnlyList<RemoteEndpoint>, bool> condition)
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        while (true)
        {
            var next = views.MoveNextAsync().AsTask();
            await Task.WhenAny(next, Task.Delay(Timeout.Infinite, deadline.Token));
            Assert.True(next.IsCompleted, "no view met the condition within 20 s");
            Assert.True(await next);
            if (condition(views.Current))
            {
                return views.Current;
            }
        }
    }

    [Fact]
    public async Task ANodesEntriesReachTheOthersAndLeaveWithItsLease()
    {
        using var ea = _etcd.Connect();
        using var eb = _etcd.Connect();
        var sessionA = new NodeSession(ea, TimeSpan.FromSeconds(2));
        await sessionA.StartAsync();
        await using var sessionB = new NodeSession(eb, TimeSpan.FromSeconds(30));
        await sessionB.StartAsync();
        var a = new ClusterIpCache(ea, sessionA, "node-a", IPAddress.Parse("192.168.50.1"));
        var b = new ClusterIpCache(eb, sessionB, "node-b", IPAddress.Parse("192.168.50.2"));
        await a.AnnounceAsync([IPNetwork.Parse("10.220.0.0/16")]);
        await a.PublishAsync(IPAddress.Parse("10.220.0.2"), 300, "shop/web");
        await a.PublishAsync(IPAddress.Parse("fd00:220::2"), 300, "shop/web");
        await b.PublishAsync(IPAddress.Parse("10.221.0.2"), 301, "shop/client");
        await ea.PutAsync(ClusterIpCache.Prefix + "node-a/10.220.0.99", "not an entry"); // ignored, not trusted
        await ea.PutAsync(ClusterIpCache.Prefix + "node-a/10.220.0.98", "300 node-a 192.168.50.1 no-namespace"); // no pod key: ignored
        await ea.PutAsync(ClusterIpCache.Prefix + "node-c/10.220.0.97", "300 node-a 192.168.50.1 shop/web"); // key of another node
        await ea.PutAsync(ClusterIpCache.Prefix + "10.220.0.96", "300 node-a 192.168.50.1 shop/web"); // no node in the key

        using var stop = new CancellationTokenSource();
        await using var views = b.FollowAsync(stop.Token).GetAsyncEnumerator();
        var view = await ViewWhere(views, v => v.Count == 2);
        var web = view.Single(e => e.Address.Equals(IPAddress.Parse("10.220.0.2")));
        Assert.Equal(new RemoteEndpoint(IPAddress.Parse("10.220.0.2"), 300, "node-a", IPAddress.Parse("192.168.50.1"), "shop/web"),
            web with { Lease = 0 });
        Assert.Equal(sessionA.Lease, web.Lease);
        Assert.Contains(view, e => e.Address.Equals(IPAddress.Parse("fd00:220::2")));
        Assert.DoesNotContain(view, e => e.Address.Equals(IPAddress.Parse("10.221.0.2"))); // its own
        Assert.Equal("300 node-a 192.168.50.1 shop/web", (await eb.ListAsync(ClusterIpCache.Prefix + "node-a/10.220.0.2")).Items
            .Single().Value.ToStringUtf8());

        await using (var nodes = b.FollowNodesAsync(stop.Token).GetAsyncEnumerator())
        {
            Assert.True(await nodes.MoveNextAsync());
            Assert.Equal(IPAddress.Parse("192.168.50.1"), nodes.Current["node-a"].Address);
            Assert.Equal([IPNetwork.Parse("10.220.0.0/16")], nodes.Current["node-a"].PodRanges);
        }

        await a.WithdrawAsync(IPAddress.Parse("fd00:220::2"));
        await ViewWhere(views, v => v.Count == 1);

        // Node A is killed: nothing keeps its lease alive, and its entries go with it.
        await sessionA.DisposeAsync();
        await ViewWhere(views, v => v.Count == 0);
        Assert.Empty((await eb.ListAsync(ClusterIpCache.NodesPrefix)).Items);
        await stop.CancelAsync();
    }

    [Fact]
    public async Task OnlyEntriesANodeHoldsOnItsLeaseInsideItsRangesAreBelieved()
    {
        using var etcd = _etcd.Connect();
        await using var sessionA = new NodeSession(etcd, TimeSpan.FromSeconds(30));
        await sessionA.StartAsync();
        await using var sessionB = new NodeSession(etcd, TimeSpan.FromSeconds(30));
        await sessionB.StartAsync();
        var a = new ClusterIpCache(etcd, sessionA, "node-a", IPAddress.Parse("192.168.50.1"));
        await a.AnnounceAsync([IPNetwork.Parse("10.220.0.0/16")]);
        await new ClusterIpCache(etcd, sessionB, "node-b", IPAddress.Parse("192.168.50.2"))
            .AnnounceAsync([IPNetwork.Parse("10.221.0.0/16")]);
        await a.PublishAsync(IPAddress.Parse("10.220.0.2"), 300, "shop/web"); // genuine
        await a.PublishAsync(IPAddress.Parse("10.99.0.1"), 300, "shop/web"); // node-a's own, outside its ranges
        await etcd.PutAsync(ClusterIpCache.Prefix + "node-a/10.220.0.66", "301 node-a 192.168.50.1 shop/admin"); // no lease
        await sessionB.PutAsync(ClusterIpCache.Prefix + "node-a/10.220.0.67", "301 node-a 192.168.50.1 shop/admin"); // node-b's lease
        await sessionB.PutAsync(ClusterIpCache.Prefix + "node-b/10.221.0.68", "301 node-b 192.168.50.9 shop/admin"); // not node-b's address
        await sessionB.PutAsync(ClusterIpCache.Prefix + "node-b/10.220.0.2", "301 node-b 192.168.50.2 shop/admin"); // node-a's pod
        await etcd.PutAsync(ClusterIpCache.Prefix + "node-z/10.222.0.69", "301 node-z 192.168.50.3 shop/admin"); // no such node
        await sessionA.PutAsync(ClusterIpCache.Prefix + "node-a/10.220.0.70", "1 node-a 192.168.50.1 shop/admin"); // host's identity

        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(20));
        var observer = new ClusterIpCache(etcd, sessionB, "node-c", IPAddress.Parse("192.168.50.3"));
        await using var entries = observer.FollowAsync(stop.Token).GetAsyncEnumerator();
        var view = await ViewWhere(entries, v => v.Count == 8);
        await using var nodes = observer.FollowNodesAsync(stop.Token).GetAsyncEnumerator();
        Assert.True(await nodes.MoveNextAsync());
        // The store's numbers: 300 allocated (as web's node did); no reserved number ever is.
        await using var numbers = ClusterIdentities.FollowNumbersAsync(etcd, stop.Token).GetAsyncEnumerator();
        await etcd.PutAsync(ClusterIdentities.IdKey(300), "k8s:app=web");
        await etcd.PutAsync(ClusterIdentities.Prefix + "id/not-a-number", "k8s:app=x"); // names no number: ignored
        IReadOnlySet<uint> allocated;
        do
        {
            Assert.True(await numbers.MoveNextAsync());
            allocated = numbers.Current;
        }
        while (!allocated.Contains(300));
        Assert.DoesNotContain(1u, allocated);
        var (believed, refused) = ClusterIpCache.Validate(view, nodes.Current, allocated);

        Assert.Equal([IPAddress.Parse("10.220.0.2")], believed.Keys);
        Assert.Equal(7, refused.Count);
        void Refused(string key, string why) => Assert.Contains(refused, r => r.StartsWith($"membrane/ipcache/{key} ",
            StringComparison.Ordinal) && r.Contains(why, StringComparison.Ordinal));
        Refused("node-a/10.99.0.1", "outside node node-a's pod ranges");
        Refused("node-a/10.220.0.66", "not held by node node-a's lease");
        Refused("node-a/10.220.0.67", "not held by node node-a's lease");
        Refused("node-b/10.221.0.68", "is not node node-b's");
        Refused("node-b/10.220.0.2", "outside node node-b's pod ranges");
        Refused("node-z/10.222.0.69", "node node-z is not announced");
        Refused("node-a/10.220.0.70", "identity 1 is not allocated in the store");
    }

    [Fact]
    public void NodeAnnouncementsThatCollideOrHaveNoLeaseAreNotBelieved()
    {
        static ClusterNode Node(string name, string address, string range, long lease) =>
            new(name, IPAddress.Parse(address), [IPNetwork.Parse(range)]) { Lease = lease };
        var nodes = new[]
        {
            Node("node-a", "192.168.50.1", "10.220.0.0/16", 1),
            Node("node-b", "192.168.50.2", "10.221.0.0/16", 2),
            Node("node-c", "192.168.50.3", "10.222.0.0/16", 0), // no lease
            Node("node-d", "192.168.50.4", "10.221.128.0/17", 4), // inside node-b's range
            Node("node-e", "10.220.0.5", "10.223.0.0/16", 5), // its address in node-a's range
        }.ToDictionary(n => n.Name);

        var (believed, refused) = ClusterIpCache.ValidateNodes(nodes, "node-a");

        Assert.Equal(["node-a"], believed.Keys); // node-b collides with node-d: neither is believed
        Assert.Equal(4, refused.Count);
        Assert.Contains("membrane/nodes/node-c: not held by a lease", refused);
        Assert.Contains("membrane/nodes/node-b: pod range 10.221.0.0/16 overlaps node node-d's", refused);
        Assert.Contains("membrane/nodes/node-d: pod range 10.221.128.0/17 overlaps node node-b's", refused);
        Assert.Contains("membrane/nodes/node-e: its address 10.220.0.5 is in node node-a's pod ranges", refused);
    }

    [Fact]
    public async Task TheFirstNodeSetsAClusterSettingAndTheOthersGetItsValue()
    {
        using var ea = _etcd.Connect();
        using var eb = _etcd.Connect();
        Assert.Equal("tunnel", await new ClusterSettings(ea).AgreeAsync("routing-mode", "tunnel"));
        Assert.Equal("tunnel", await new ClusterSettings(eb).AgreeAsync("routing-mode", "native"));
        Assert.Equal("tunnel", await new ClusterSettings(eb).AgreeAsync("routing-mode", "tunnel"));
    }

    public void Dispose() => _etcd.Dispose();
}
