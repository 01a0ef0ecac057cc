using System.Threading.Channels;
using Etcdserverpb;

namespace Membrane.Kvstore.Tests;

/// <summary>List-then-watch on a real three-member etcd: no event lost across an etcd restart, a compaction or a leader change.</summary>
public sealed class PrefixWatcherTests : IDisposable
{
    private const string Prefix = "membrane/objects/";
    private readonly EtcdCluster _etcd = new();

    /// <summary>Applies events as a consumer would and returns its view once it has reached <paramref name="revision"/>.</summary>
    private static async Task<Dictionary<string, string>> ConsumeUntil(ChannelReader<StoreEvent> events, Dictionary<string, string> view,
        long revision)
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(30));
        var seen = 0L;
        while (seen < revision)
        {
            var e = await events.ReadAsync(deadline.Token);
            switch (e)
            {
                case StoreSnapshot snapshot:
                    view.Clear();
                    foreach (var (key, value) in snapshot.Items)
                    {
                        view[key] = value;
                    }
                    break;
                case StorePut put:
                    Assert.True(put.Revision > seen, $"revision {put.Revision} after {seen}: out of order");
                    view[put.Key] = put.Value;
                    break;
                case StoreDelete delete:
                    view.Remove(delete.Key);
                    break;
            }
            seen = e.Revision;
        }
        return view;
    }

    private static async Task<long> Put(EtcdConnection etcd, string key, string value) =>
        (await etcd.PutAsync(Prefix + key, value)).Header.Revision;

    private static async Task<Dictionary<string, string>> Stored(EtcdConnection etcd) =>
        (await etcd.ListAsync(Prefix)).Items.ToDictionary(kv => kv.Key.ToStringUtf8(), kv => kv.Value.ToStringUtf8());

    [Fact]
    public async Task AWatchSurvivesARestartOfEveryMemberWithoutLosingAnEvent()
    {
        using var etcd = _etcd.Connect();
        await Put(etcd, "before", "1");
        using var stop = new CancellationTokenSource();
        var watcher = new PrefixWatcher(etcd, Prefix);
        var events = watcher.Start(stop.Token);
        var view = new Dictionary<string, string>();
        var revision = await Put(etcd, "a", "1");
        await ConsumeUntil(events, view, revision);

        _etcd.KillAll();
        _etcd.StartAll();
        for (var i = 0; i < 20; i++)
        {
            revision = await Put(etcd, $"after-{i}", $"{i}");
        }
        await etcd.Client.DeleteAsync(new DeleteRangeRequest { Key = EtcdConnection.Bytes(Prefix + "a") }, deadline: etcd.Deadline);
        revision = await Put(etcd, "last", "x");
        Assert.Equal(await Stored(etcd), await ConsumeUntil(events, view, revision));
        Assert.True(watcher.Reconnects > 0, "the watch was never re-established: the restart was not seen");
        Assert.Equal(0, watcher.Relists);
        await stop.CancelAsync();
    }

    [Fact]
    public async Task AWatcherBehindACompactionListsAgainAndConverges()
    {
        using var etcd = _etcd.Connect();
        var seen = await Put(etcd, "x", "1"); // what a consumer had seen before it stopped
        for (var i = 0; i < 10; i++)
        {
            await Put(etcd, $"k{i}", $"{i}");
        }
        var head = await Put(etcd, "x", "2");
        await etcd.Client.CompactAsync(new CompactionRequest { Revision = head, Physical = true }, deadline: etcd.Deadline);
        using var stop = new CancellationTokenSource();
        var watcher = new PrefixWatcher(etcd, Prefix) { ResumeAfter = seen };
        var events = watcher.Start(stop.Token);
        var view = new Dictionary<string, string> { [Prefix + "x"] = "1" };
        var revision = await Put(etcd, "after-compaction", "y");
        Assert.Equal(await Stored(etcd), await ConsumeUntil(events, view, revision));
        Assert.Equal(1, watcher.Relists);
        await stop.CancelAsync();
    }

    [Fact]
    public async Task LosingOneMemberOfThreeIsNotVisible()
    {
        using var etcd = _etcd.Connect();
        using var stop = new CancellationTokenSource();
        var events = new PrefixWatcher(etcd, Prefix).Start(stop.Token);
        var view = new Dictionary<string, string>();
        var revision = await Put(etcd, "a", "1");
        await ConsumeUntil(events, view, revision);
        _etcd.Kill(0);
        for (var i = 0; i < 10; i++)
        {
            revision = await Put(etcd, $"one-down-{i}", "v"); // a write caught in a leader change is retried by the connection
        }
        Assert.Equal(await Stored(etcd), await ConsumeUntil(events, view, revision));
        await stop.CancelAsync();
    }

    [Fact]
    public async Task LosingQuorumFailsWritesClearlyAndEverythingConvergesWhenItReturns()
    {
        using var etcd = _etcd.Connect(TimeSpan.FromSeconds(1));
        using var stop = new CancellationTokenSource();
        var watcher = new PrefixWatcher(etcd, Prefix);
        var events = watcher.Start(stop.Token);
        var view = new Dictionary<string, string>();
        await ConsumeUntil(events, view, await Put(etcd, "a", "1"));
        _etcd.Kill(1);
        _etcd.Kill(2);
        var failed = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => Put(etcd, "no-quorum", "lost?"));
        Assert.Contains(failed.StatusCode, new[] { Grpc.Core.StatusCode.DeadlineExceeded, Grpc.Core.StatusCode.Unavailable });
        _etcd.StartAll();
        var revision = await Put(etcd, "back", "1");
        // The write that timed out may have been committed after all: the consumer converges on whatever the store has.
        Assert.Equal(await Stored(etcd), await ConsumeUntil(events, view, revision));
        await stop.CancelAsync();
    }

    [Fact]
    public async Task StoppingAWatcherAtAnyMomentCompletesItsEventsWithoutAnError()
    {
        // Stopped while writes stream in, the watch call can end with status Cancelled rather than an
        // OperationCanceledException; the consumer must see the events end, not a failure.
        using var etcd = _etcd.Connect();
        var random = new Random(14);
        for (var i = 0; i < 20; i++)
        {
            using var stop = new CancellationTokenSource();
            var events = new PrefixWatcher(etcd, Prefix).Start(stop.Token);
            var writes = Task.Run(async () =>
            {
                for (var n = 0; n < 20; n++)
                {
                    await Put(etcd, $"stop-{i}-{n}", "v");
                }
            });
            await Task.Delay(random.Next(0, 60));
            await stop.CancelAsync();
            // Reading to the end throws if the watcher failed instead of stopping.
            using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(10));
            await foreach (var _ in events.ReadAllAsync(deadline.Token))
            {
            }
            await writes.WaitAsync(TimeSpan.FromSeconds(30));
        }
    }

    public void Dispose() => _etcd.Dispose();
}
