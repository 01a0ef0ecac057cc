using System.Diagnostics;

namespace Membrane.Kvstore.Tests;

/// <summary>A node's leased keys on a real three-member etcd: kept alive, rewritten after the lease was lost, gone when revoked.</summary>
public sealed class NodeSessionTests : IDisposable
{
    private readonly EtcdCluster _etcd = new();

    private static async Task<string?> Read(EtcdConnection etcd, string key) =>
        (await etcd.ListAsync(key)).Items.FirstOrDefault(kv => kv.Key.ToStringUtf8() == key)?.Value.ToStringUtf8();

    /// <summary>Polls (deadline <paramref name="limit"/>) until <paramref name="condition"/> holds.</summary>
    private static async Task<bool> Within(TimeSpan limit, Func<Task<bool>> condition)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < limit)
        {
            try
            {
                if (await condition())
                {
                    return true;
                }
            }
            catch (Grpc.Core.RpcException)
            {
                // the store is still coming back
            }
            await Task.Delay(100);
        }
        return false;
    }

    [Fact]
    public async Task KeysOutliveTheirTimeToLiveWhileTheNodeRuns()
    {
        using var etcd = _etcd.Connect();
        await using var session = new NodeSession(etcd, TimeSpan.FromSeconds(2));
        await session.StartAsync();
        await session.PutAsync("membrane/nodes/n1", "10.0.0.1");
        // Three times the time to live: without keep-alive the key would be gone after two seconds.
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(6))
        {
            Assert.Equal("10.0.0.1", await Read(etcd, "membrane/nodes/n1"));
            await Task.Delay(250);
        }
        Assert.Equal(0, session.Renewals);
    }

    [Fact]
    public async Task AfterAQuorumLossLongerThanTheLeaseTheNodesKeysArePresentAgain()
    {
        using var etcd = _etcd.Connect(TimeSpan.FromSeconds(1));
        await using var session = new NodeSession(etcd, TimeSpan.FromSeconds(2));
        await session.StartAsync();
        await session.PutAsync("membrane/nodes/n1", "10.0.0.1");
        await session.PutAsync("membrane/ipcache/10.200.0.2", "300 10.0.0.1");
        _etcd.Kill(1);
        _etcd.Kill(2);
        var outage = Stopwatch.StartNew();
        // The outage lasts longer than the lease's time to live. Whether etcd then revokes the lease or its new
        // leader extends it (it refreshes leases when it takes over), the node's keys must be there afterwards.
        while (outage.Elapsed < session.TimeToLive + TimeSpan.FromSeconds(1))
        {
            await Task.Delay(100);
        }
        _etcd.StartAll();
        Assert.True(await Within(TimeSpan.FromSeconds(30), async () => await Read(etcd, "membrane/nodes/n1") == "10.0.0.1"
            && await Read(etcd, "membrane/ipcache/10.200.0.2") == "300 10.0.0.1"), "the node's keys did not come back");
        // And they stay: the lease they are on is kept alive.
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < session.TimeToLive * 2)
        {
            Assert.Equal("10.0.0.1", await Read(etcd, "membrane/nodes/n1"));
            await Task.Delay(250);
        }
    }

    [Fact]
    public async Task WhenTheStoreRevokesTheLeaseTheKeysAreWrittenAgainOnANewOne()
    {
        using var etcd = _etcd.Connect();
        await using var session = new NodeSession(etcd, TimeSpan.FromSeconds(2));
        await session.StartAsync();
        await session.PutAsync("membrane/nodes/n1", "10.0.0.1");
        var first = session.Lease;
        await etcd.Client.LeaseRevokeAsync(new Etcdserverpb.LeaseRevokeRequest { ID = first }, deadline: etcd.Deadline);
        Assert.True(await Within(TimeSpan.FromSeconds(20), async () => session.Renewals == 1
            && await Read(etcd, "membrane/nodes/n1") == "10.0.0.1"), "the key did not come back on a new lease");
        Assert.NotEqual(first, session.Lease);
    }

    [Fact]
    public async Task StoppingASessionAtAnyMomentOfItsKeepAliveEndsItQuietly()
    {
        // The stop can land while the keep-alive stream waits for an answer; gRPC then ends the call with status
        // Cancelled instead of an OperationCanceledException. Stopping must not fail either way (an agent's orderly
        // stop, or a test's dispose, would otherwise throw).
        using var etcd = _etcd.Connect();
        var random = new Random(14);
        for (var i = 0; i < 40; i++)
        {
            var session = new NodeSession(etcd, TimeSpan.FromSeconds(1));
            await session.StartAsync();
            await Task.Delay(random.Next(0, 400));
            await session.DisposeAsync();
        }
    }

    [Fact]
    public async Task RevokingTheLeaseRemovesEveryKeyAtOnce()
    {
        using var etcd = _etcd.Connect();
        await using var session = new NodeSession(etcd, TimeSpan.FromSeconds(60));
        await session.StartAsync();
        await session.PutAsync("membrane/nodes/n1", "10.0.0.1");
        await session.PutAsync("membrane/ipcache/10.200.0.2", "300 10.0.0.1");
        await session.RevokeAsync();
        Assert.Empty((await etcd.ListAsync("membrane/")).Items);
    }

    public void Dispose() => _etcd.Dispose();
}
