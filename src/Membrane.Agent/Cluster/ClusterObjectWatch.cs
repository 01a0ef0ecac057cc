using Membrane.Agent.State;
using Membrane.Kvstore;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Cluster;

/// <summary>
/// Cluster mode: watches the cluster's objects in etcd (list, then every change, never losing one) and hands the
/// store's state to the agent, which enforces it. Changes that arrive together are applied as one.
/// </summary>
public sealed partial class ClusterObjectWatch(AgentService agent, EtcdConnection etcd, ClusterObjectStore store,
    ILogger<ClusterObjectWatch> log) : BackgroundService
{
    protected override async Task ExecuteAsync(CancellationToken stoppingToken)
    {
        var watcher = new PrefixWatcher(etcd, ClusterObjects.Prefix);
        var events = watcher.Start(stoppingToken);
        var current = new Dictionary<string, string>(StringComparer.Ordinal);
        var revision = 0L;
        while (!stoppingToken.IsCancellationRequested)
        {
            var next = await events.ReadAsync(stoppingToken).ConfigureAwait(false);
            var listing = false;
            var received = next.Received;
            do
            {
                listing |= next is StoreSnapshot;
                revision = Take(next, current);
            }
            while (events.TryRead(out next));
            try
            {
                await agent.ApplyStoreStateAsync(new Dictionary<string, string>(current, StringComparer.Ordinal), revision, listing,
                    stoppingToken).ConfigureAwait(false);
                KvstoreMetrics.Enforced(received); // from the batch's first change: the longest wait in it
            }
            catch (Exception e) when (e is not OperationCanceledException || !stoppingToken.IsCancellationRequested)
            {
                // Whatever the store holds, this node keeps enforcing its last good state and serving: the next
                // change tries again with the whole state. An unexpected failure is logged with its type and stack.
                if (e is AgentInputException or InvalidOperationException or IOException)
                {
                    NotEnforced(log, revision, e.Message);
                }
                else
                {
                    NotEnforcedUnexpectedly(log, revision, e);
                }
            }
        }
    }

    private long Take(StoreEvent change, Dictionary<string, string> current)
    {
        switch (change)
        {
            case StoreSnapshot snapshot:
                current.Clear();
                foreach (var (key, yaml) in snapshot.Items)
                {
                    current[key[ClusterObjects.Prefix.Length..]] = yaml;
                    store.Observe(key[ClusterObjects.Prefix.Length..], snapshot.Revision);
                }
                break;
            case StorePut put:
                current[put.Key[ClusterObjects.Prefix.Length..]] = put.Value;
                store.Observe(put.Key[ClusterObjects.Prefix.Length..], put.Revision);
                break;
            case StoreDelete delete:
                current.Remove(delete.Key[ClusterObjects.Prefix.Length..]);
                store.Observe(delete.Key[ClusterObjects.Prefix.Length..], 0);
                break;
        }
        return change.Revision;
    }

    [LoggerMessage(EventId = 40, Level = LogLevel.Error,
        Message = "the cluster's state at revision {Revision} is not enforced here: {Reason}")]
    private static partial void NotEnforced(ILogger logger, long revision, string reason);

    [LoggerMessage(EventId = 45, Level = LogLevel.Error,
        Message = "the cluster's state at revision {Revision} is not enforced here: an unexpected failure")]
    private static partial void NotEnforcedUnexpectedly(ILogger logger, long revision, Exception exception);
}
