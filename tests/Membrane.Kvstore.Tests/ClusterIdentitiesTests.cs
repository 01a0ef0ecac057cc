namespace Membrane.Kvstore.Tests;

/// <summary>Cluster-wide identities on a real three-member etcd.</summary>
public sealed class ClusterIdentitiesTests : IDisposable
{
    private readonly EtcdCluster _etcd = new();
    private readonly List<NodeSession> _sessions = [];

    private static string Labels(int i) => $"k8s:app=app{i},k8s:io.kubernetes.pod.namespace=ns{i % 7}";

    private async Task<(EtcdConnection Connection, ClusterIdentities Identities)> Node(string name, TimeSpan? ttl = null,
        bool keepAlive = true)
    {
        var connection = _etcd.Connect();
        var session = new NodeSession(connection, ttl ?? TimeSpan.FromSeconds(30));
        if (keepAlive)
        {
            await session.StartAsync();
            _sessions.Add(session);
        }
        else
        {
            await session.GrantOnlyAsync(); // a node killed right after: nothing keeps its lease alive
        }
        return (connection, new ClusterIdentities(connection, name, session));
    }

    [Fact]
    public async Task ThreeAgentsRacingForTheSameHundredLabelSetsEndWithOneIdentityEach()
    {
        var nodes = new[] { await Node("n1"), await Node("n2"), await Node("n3") };
        try
        {
            var results = await Task.WhenAll(nodes.Select(async (node, n) =>
            {
                // Each node asks in its own order, all at the same moment.
                var order = Enumerable.Range(0, 100).OrderBy(i => (i * (n + 3) * 7919) % 101).ToList();
                var ids = new Dictionary<int, uint>();
                foreach (var i in order)
                {
                    ids[i] = await node.Identities.AcquireAsync(Labels(i));
                }
                return ids;
            }));
            for (var i = 0; i < 100; i++)
            {
                Assert.Equal(results[0][i], results[1][i]);
                Assert.Equal(results[0][i], results[2][i]);
            }
            Assert.Equal(100, results[0].Values.Distinct().Count());
            var stored = await nodes[0].Identities.ListAsync();
            Assert.Equal(100, stored.Count);
            Assert.All(Enumerable.Range(0, 100), i => Assert.Equal(Labels(i), stored[results[0][i]]));
            Assert.All(stored.Keys, id => Assert.InRange(id, ClusterIdentities.First, ClusterIdentities.Last));
        }
        finally
        {
            foreach (var node in nodes)
            {
                node.Connection.Dispose();
            }
        }
    }

    [Fact]
    public async Task GarbageCollectionRemovesOnlyIdentitiesNoNodeUsesAndNeverOneTakenBetweenRounds()
    {
        var (c1, a) = await Node("n1");
        var (c2, b) = await Node("n2");
        using (c1)
        using (c2)
        {
            var unused = await a.AcquireAsync(Labels(1));
            var shared = await a.AcquireAsync(Labels(2));
            Assert.Equal(shared, await b.AcquireAsync(Labels(2)));
            var racing = await a.AcquireAsync(Labels(3));
            await a.ReleaseAsync(unused);
            await a.ReleaseAsync(shared); // b still uses it
            await a.ReleaseAsync(racing);

            var marks = new Dictionary<uint, long>();
            Assert.Empty(await a.CollectGarbageAsync(marks)); // round 1 only marks
            Assert.Equal([unused, racing], marks.Keys.Order().ToList());
            Assert.Equal(racing, await b.AcquireAsync(Labels(3))); // taken between the rounds
            Assert.Equal([unused], await b.CollectGarbageAsync(marks)); // round 2, by another agent
            var left = await a.ListAsync();
            Assert.DoesNotContain(unused, left.Keys);
            Assert.Contains(shared, left.Keys);
            Assert.Contains(racing, left.Keys);
            // The collected label set gets a fresh identity when it comes back.
            Assert.NotEqual(0u, await a.AcquireAsync(Labels(1)));
        }
    }

    [Fact]
    public async Task IdentitiesOfANodeWhoseLeaseExpiredAreCollected()
    {
        var (c1, dead) = await Node("dead", TimeSpan.FromSeconds(2), keepAlive: false);
        var (c2, alive) = await Node("alive");
        using (c1)
        using (c2)
        {
            var id = await dead.AcquireAsync(Labels(9));
            // The node was killed: nothing keeps its lease alive, and its user key goes with it.
            var deadline = DateTime.UtcNow.AddSeconds(20);
            var marks = new Dictionary<uint, long>();
            var collected = new List<uint>();
            while (!collected.Contains(id) && DateTime.UtcNow < deadline)
            {
                collected.AddRange(await alive.CollectGarbageAsync(marks));
                await Task.Delay(200);
            }
            Assert.Contains(id, collected);
        }
    }

    public void Dispose()
    {
        foreach (var session in _sessions)
        {
            session.DisposeAsync().AsTask().GetAwaiter().GetResult();
        }
        _etcd.Dispose();
    }
}
