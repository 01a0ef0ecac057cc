using System.Threading.Channels;
using Etcdserverpb;
using Grpc.Core;

namespace Membrane.Kvstore;

/// <summary>
/// What a watcher reports: a full listing (at start, and again after a compaction) or one change, with when it was
/// received (a <see cref="System.Diagnostics.Stopwatch"/> timestamp).
/// </summary>
public abstract record StoreEvent(long Revision)
{
    public long Received { get; init; } = System.Diagnostics.Stopwatch.GetTimestamp();
}

/// <summary>Every key under the prefix at <see cref="StoreEvent.Revision"/>: replaces whatever the consumer had.</summary>
public sealed record StoreSnapshot(IReadOnlyDictionary<string, string> Items, long Revision) : StoreEvent(Revision)
{
    /// <summary>The lease each key is held by (0: none), for consumers that believe a key only from its owner.</summary>
    public IReadOnlyDictionary<string, long> Leases { get; init; } = new Dictionary<string, long>();
}

public sealed record StorePut(string Key, string Value, long Revision) : StoreEvent(Revision)
{
    /// <summary>The lease the key is held by (0: none).</summary>
    public long Lease { get; init; }
}

public sealed record StoreDelete(string Key, long Revision) : StoreEvent(Revision);

/// <summary>
/// Lists a prefix, then watches it from the listed revision + 1, and never loses an event: when the watch breaks
/// (etcd restarted, a member or the leader changed, the connection dropped) it resumes from the last revision it
/// delivered + 1; when that revision was compacted away it lists again and delivers a new snapshot. Events come in
/// revision order on one reader.
/// </summary>
public sealed class PrefixWatcher(EtcdConnection etcd, string prefix)
{
    /// <summary>How long to wait before trying again after a failure (doubles up to 2 s).</summary>
    public TimeSpan RetryDelay { get; init; } = TimeSpan.FromMilliseconds(100);

    /// <summary>How many times the listing was redone because the watch fell behind a compaction.</summary>
    public int Relists { get; private set; }

    /// <summary>How many times the watch was re-established after an error.</summary>
    public int Reconnects { get; private set; }

    /// <summary>The last revision delivered (the store revision this watcher's consumer has seen).</summary>
    public long Revision { get; private set; }

    /// <summary>
    /// Resume after this revision without listing first (a consumer that persisted what it had seen); when it was
    /// compacted meanwhile, the watcher lists again.
    /// </summary>
    public long ResumeAfter { get; init; }

    public ChannelReader<StoreEvent> Start(CancellationToken cancel)
    {
        var channel = Channel.CreateUnbounded<StoreEvent>(new UnboundedChannelOptions { SingleReader = true, SingleWriter = true });
        _ = Task.Run(async () =>
        {
            try
            {
                await RunAsync(channel.Writer, cancel).ConfigureAwait(false);
                channel.Writer.TryComplete();
            }
            catch (Exception e) when (e is OperationCanceledException || EtcdConnection.CancelledBy(e, cancel))
            {
                channel.Writer.TryComplete();
            }
#pragma warning disable CA1031 // handed to the reader, which sees the watcher fail instead of waiting forever
            catch (Exception e)
#pragma warning restore CA1031
            {
                channel.Writer.TryComplete(e);
            }
        }, CancellationToken.None);
        return channel.Reader;
    }

    private async Task RunAsync(ChannelWriter<StoreEvent> output, CancellationToken cancel)
    {
        var delay = RetryDelay;
        var listed = ResumeAfter > 0;
        Revision = ResumeAfter;
        while (!cancel.IsCancellationRequested)
        {
            try
            {
                if (!listed)
                {
                    var (items, revision) = await etcd.ListAsync(prefix, cancel).ConfigureAwait(false);
                    Revision = revision;
                    KvstoreMetrics.Event(prefix, "list");
                    await output.WriteAsync(new StoreSnapshot(items.ToDictionary(kv => kv.Key.ToStringUtf8(), kv => kv.Value.ToStringUtf8(),
                        StringComparer.Ordinal), revision)
                    {
                        Leases = items.ToDictionary(kv => kv.Key.ToStringUtf8(), kv => kv.Lease, StringComparer.Ordinal),
                    }, cancel).ConfigureAwait(false);
                    listed = true;
                }
                if (await WatchAsync(output, cancel).ConfigureAwait(false))
                {
                    listed = false; // compacted: the events between are gone, list again
                    Relists++;
                }
                delay = RetryDelay;
            }
#pragma warning disable CA1031 // a watch must outlive any failure of the store, the connection or the gRPC client
            catch (Exception e) when (!cancel.IsCancellationRequested && e is not ChannelClosedException)
#pragma warning restore CA1031
            {
                // The connection broke under the stream (an etcd restart, a member gone): resume from the last revision
                // delivered. Nothing was delivered past it, so resuming can neither lose nor repeat an event.
                Reconnects++;
                await Task.Delay(delay, cancel).ConfigureAwait(false);
                delay = TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, TimeSpan.FromSeconds(1).Ticks));
            }
        }
    }

    /// <summary>Watches from the last revision + 1 until the stream ends or fails; true when the start was compacted.</summary>
    private async Task<bool> WatchAsync(ChannelWriter<StoreEvent> output, CancellationToken cancel)
    {
        using var call = etcd.Watch.Watch(cancellationToken: cancel);
        await call.RequestStream.WriteAsync(new WatchRequest
        {
            CreateRequest = new WatchCreateRequest
            {
                Key = EtcdConnection.Bytes(prefix),
                RangeEnd = EtcdConnection.RangeEnd(prefix),
                StartRevision = Revision + 1,
                ProgressNotify = true,
            },
        }, cancel).ConfigureAwait(false);
        while (await call.ResponseStream.MoveNext(cancel).ConfigureAwait(false))
        {
            var response = call.ResponseStream.Current;
            if (response.CompactRevision > 0)
            {
                return true;
            }
            if (response.Canceled)
            {
                throw new RpcException(new Status(StatusCode.Unavailable, $"etcd cancelled the watch: {response.CancelReason}"));
            }
            if (response.Events.Count == 0 && !response.Created && response.Header.Revision > Revision)
            {
                Revision = response.Header.Revision; // a progress notification: nothing under the prefix changed until here
                continue;
            }
            foreach (var e in response.Events)
            {
                var key = e.Kv.Key.ToStringUtf8();
                StoreEvent change = e.Type == Mvccpb.Event.Types.EventType.Delete
                    ? new StoreDelete(key, e.Kv.ModRevision)
                    : new StorePut(key, e.Kv.Value.ToStringUtf8(), e.Kv.ModRevision) { Lease = e.Kv.Lease };
                KvstoreMetrics.Event(prefix, change is StoreDelete ? "delete" : "put");
                await output.WriteAsync(change, cancel).ConfigureAwait(false);
                Revision = e.Kv.ModRevision;
            }
        }
        throw new RpcException(new Status(StatusCode.Unavailable, "the watch stream ended"));
    }
}
