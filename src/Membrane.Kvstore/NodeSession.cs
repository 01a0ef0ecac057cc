using Etcdserverpb;

namespace Membrane.Kvstore;

/// <summary>
/// A node's presence in the store: one lease kept alive, and the keys the node owns on it (its node entry, ipcache
/// entries, identity users). When the lease is lost — the store was away longer than its time to live, and etcd
/// revokes such leases at once on recovery — the session grants a new one and writes every owned key again, so the
/// node's entries come back without anyone asking. Without a node the keys expire with the lease: that is how the
/// other nodes forget a node that was killed.
/// </summary>
public sealed class NodeSession(EtcdConnection etcd, TimeSpan ttl) : IAsyncDisposable
{
    private readonly Dictionary<string, string> _owned = new(StringComparer.Ordinal);
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly CancellationTokenSource _stop = new();
    private Task? _keepAlive;

    public TimeSpan TimeToLive => ttl;

    public long Lease { get; private set; }

    /// <summary>How many times the lease was lost and a new one granted (the owned keys written again).</summary>
    public int Renewals { get; private set; }

    public async Task StartAsync(CancellationToken cancel = default)
    {
        await GrantOnlyAsync(cancel).ConfigureAwait(false);
        _keepAlive = Task.Run(() => KeepAliveAsync(_stop.Token), CancellationToken.None);
    }

    /// <summary>Grants the lease without keeping it alive (tests: a node that dies at once).</summary>
    public async Task GrantOnlyAsync(CancellationToken cancel = default) =>
        Lease = await etcd.GrantLeaseAsync(ttl, cancel).ConfigureAwait(false);

    /// <summary>Writes a key on the lease and remembers it, so it is written again on a new lease.</summary>
    public async Task PutAsync(string key, string value, CancellationToken cancel = default)
    {
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            Own(key, value);
            await etcd.PutAsync(key, value, Lease, cancel).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Remembers a key written on the lease by a transaction of the caller's own.</summary>
    public void Own(string key, string value)
    {
        lock (_owned)
        {
            _owned[key] = value;
        }
    }

    public async Task DeleteAsync(string key, CancellationToken cancel = default)
    {
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            lock (_owned)
            {
                _owned.Remove(key);
            }
            await etcd.CallAsync(deadline => etcd.Client.DeleteAsync(new DeleteRangeRequest { Key = EtcdConnection.Bytes(key) },
                deadline: deadline, cancellationToken: cancel), cancel).ConfigureAwait(false);
        }
        finally
        {
            _gate.Release();
        }
    }

    private async Task KeepAliveAsync(CancellationToken stop)
    {
        try
        {
            await KeepAliveLoopAsync(stop).ConfigureAwait(false);
        }
        catch (Exception e) when (EtcdConnection.CancelledBy(e, stop))
        {
            // stopped
        }
    }

    private async Task KeepAliveLoopAsync(CancellationToken stop)
    {
        var interval = TimeSpan.FromTicks(Math.Max(ttl.Ticks / 3, TimeSpan.FromMilliseconds(200).Ticks));
        while (!stop.IsCancellationRequested)
        {
            try
            {
                using var call = etcd.Leases.LeaseKeepAlive(cancellationToken: stop);
                while (!stop.IsCancellationRequested)
                {
                    await call.RequestStream.WriteAsync(new LeaseKeepAliveRequest { ID = Lease }, stop).ConfigureAwait(false);
                    using var answer = CancellationTokenSource.CreateLinkedTokenSource(stop);
                    // No longer than a keep-alive interval: after an outage the next attempt, on a fresh stream, comes soon
                    // (a lease revoked meanwhile is renewed, and the node's keys written again, that much sooner).
                    answer.CancelAfter(TimeSpan.FromTicks(Math.Min(etcd.RequestTimeout.Ticks, Math.Max(interval.Ticks,
                        TimeSpan.FromMilliseconds(500).Ticks))));
                    if (!await call.ResponseStream.MoveNext(answer.Token).ConfigureAwait(false))
                    {
                        break;
                    }
                    if (call.ResponseStream.Current.TTL <= 0)
                    {
                        await RenewAsync(stop).ConfigureAwait(false); // the lease is gone: a new one, every key again
                        break;
                    }
                    await Task.Delay(interval, stop).ConfigureAwait(false);
                }
            }
#pragma warning disable CA1031 // the keep-alive must outlive any failure of the store or the connection
            catch (Exception) when (!stop.IsCancellationRequested)
#pragma warning restore CA1031
            {
                // The store is away (or answered too late): keep trying; the lease may expire meanwhile.
                await Task.Delay(interval, stop).ConfigureAwait(false);
            }
        }
    }

    private async Task RenewAsync(CancellationToken cancel)
    {
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            Lease = await etcd.GrantLeaseAsync(ttl, cancel).ConfigureAwait(false);
            List<KeyValuePair<string, string>> keys;
            lock (_owned)
            {
                keys = [.. _owned];
            }
            foreach (var (key, value) in keys)
            {
                await etcd.PutAsync(key, value, Lease, cancel).ConfigureAwait(false);
            }
            Renewals++;
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>Stops keeping the lease alive and revokes it: every owned key goes at once (an orderly stop).</summary>
    public async ValueTask DisposeAsync()
    {
        await _stop.CancelAsync().ConfigureAwait(false);
        if (_keepAlive is not null)
        {
            await _keepAlive.ConfigureAwait(false);
        }
        _stop.Dispose();
        _gate.Dispose();
    }

    /// <summary>Revokes the lease: the node's keys vanish now instead of after the time to live.</summary>
    public async Task RevokeAsync(CancellationToken cancel = default) =>
        await etcd.CallAsync(deadline => etcd.Client.LeaseRevokeAsync(new LeaseRevokeRequest { ID = Lease }, deadline: deadline,
            cancellationToken: cancel), cancel).ConfigureAwait(false);
}
