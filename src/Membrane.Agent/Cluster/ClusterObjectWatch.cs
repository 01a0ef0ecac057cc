using Membrane.Agent.Hosting;
using Membrane.Agent.State;
using Membrane.Kvstore;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Cluster;

/// <summary>
/// Cluster mode: watches the cluster's objects in etcd (list, then every change, never losing one) and hands the
/// store's state to the agent, which enforces it. Changes that arrive together are applied as one. A state this node
/// cannot enforce leaves it enforcing its last good one: status says <c>degraded</c> with the revision, the objects
/// changed since the last good state and the reason, and the whole state is tried again on the next change or after
/// a backoff (1 s doubling to 30 s), whichever comes first.
/// </summary>
public sealed partial class ClusterObjectWatch(AgentService agent, EtcdConnection etcd, ClusterObjectStore store, ClusterHealth health,
    ILogger<ClusterObjectWatch> log) : BackgroundService
{
    private ClusterSync Sync => agent.Cluster ?? throw new InvalidOperationException("the agent does not run in cluster mode");

    public const string Part = "objects";

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Supervised.RunAsync("the store watch", FollowAsync, log, stoppingToken, health.Problem);

    private async Task FollowAsync(CancellationToken stop)
    {
        var watcher = new PrefixWatcher(etcd, ClusterObjects.Prefix);
        var events = watcher.Start(stop);
        var current = new Dictionary<string, string>(StringComparer.Ordinal);
        var enforced = new Dictionary<string, string>(StringComparer.Ordinal);
        var revision = 0L;
        var listing = false;
        TimeSpan? retry = null;
        health.Resolved("the store watch");
        while (!stop.IsCancellationRequested)
        {
            if (await NextAsync(events, retry, stop).ConfigureAwait(false) is { } next)
            {
                var received = next.Received;
                do
                {
                    listing |= next is StoreSnapshot;
                    revision = Take(next, current);
                }
                while (events.TryRead(out next));
                if (!await EnforceAsync(current, enforced, revision, listing, stop).ConfigureAwait(false))
                {
                    retry = Supervised.FirstDelay;
                    continue;
                }
                KvstoreMetrics.Enforced(received); // from the batch's first change: the longest wait in it
            }
            else if (!await EnforceAsync(current, enforced, revision, listing, stop).ConfigureAwait(false))
            {
                retry = Supervised.Next(retry ?? Supervised.FirstDelay);
                continue;
            }
            listing = false;
            retry = null;
        }
    }

    /// <summary>The next change; when a state is waiting to be tried again, null once <paramref name="retry"/> has passed.</summary>
    private static async Task<StoreEvent?> NextAsync(System.Threading.Channels.ChannelReader<StoreEvent> events, TimeSpan? retry,
        CancellationToken stop)
    {
        if (retry is not { } delay)
        {
            return await events.ReadAsync(stop).ConfigureAwait(false);
        }
        using var timer = CancellationTokenSource.CreateLinkedTokenSource(stop);
        timer.CancelAfter(delay);
        try
        {
            return await events.ReadAsync(timer.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (!stop.IsCancellationRequested)
        {
            return null;
        }
    }

    /// <summary>Enforces the store's state; false (reported, the last good state still enforced) when this node cannot.</summary>
    private async Task<bool> EnforceAsync(Dictionary<string, string> current, Dictionary<string, string> enforced, long revision,
        bool listing, CancellationToken stop)
    {
        try
        {
            await Sync.ApplyStoreStateAsync(Believed(current), revision, listing, stop).ConfigureAwait(false);
        }
#pragma warning disable CA1031 // whatever the store holds, this node keeps serving and enforcing its last good state
        catch (Exception e) when (!stop.IsCancellationRequested)
#pragma warning restore CA1031
        {
            var changed = current.Where(o => !enforced.TryGetValue(o.Key, out var yaml) || yaml != o.Value).Select(o => o.Key)
                .Concat(enforced.Keys.Where(k => !current.ContainsKey(k)).Select(k => $"{k} (deleted)")).Order(StringComparer.Ordinal)
                .ToList();
            var objects = changed.Count == 0 ? "no object changed since its last good state"
                : $"changed since its last good state: {string.Join(", ", changed.Take(10))}{(changed.Count > 10 ? ", …" : "")}";
            var reason = e is AgentInputException or InvalidOperationException or IOException ? e.Message
                : $"{e.GetType().Name}: {e.Message}";
            Sync.NotEnforced(revision, reason);
            health.Problem(Part, $"the store's state at revision {revision} is not enforced on this node ({objects}): {reason}; it " +
                $"keeps enforcing its last good state and tries again");
            if (e is AgentInputException or InvalidOperationException or IOException)
            {
                NotEnforced(log, revision, string.Join(", ", changed), e.Message);
            }
            else
            {
                NotEnforcedUnexpectedly(log, revision, string.Join(", ", changed), e);
            }
            return false;
        }
        if (health.ProblemOf(Part) is not null)
        {
            Recovered(log, revision);
        }
        health.Resolved(Part);
        enforced.Clear();
        foreach (var (key, yaml) in current)
        {
            enforced[key] = yaml;
        }
        return true;
    }

    /// <summary>Each object's verdict, kept while its value is unchanged (a state is re-checked at every change).</summary>
    private readonly Dictionary<string, (string Yaml, string? Problem)> _verdicts = new(StringComparer.Ordinal);

    /// <summary>
    /// The objects to believe: each must load alone, as <c>apply</c> loads it, into exactly the one object its key
    /// names. Anything else written to the store is left out, named in <c>status</c> and logged — never believed, and
    /// never a reason to stop enforcing the rest.
    /// </summary>
    private Dictionary<string, string> Believed(Dictionary<string, string> current)
    {
        foreach (var gone in _verdicts.Keys.Where(k => !current.ContainsKey(k)).ToList())
        {
            _verdicts.Remove(gone);
        }
        var believed = new Dictionary<string, string>(StringComparer.Ordinal);
        var refused = new List<string>();
        foreach (var (key, yaml) in current)
        {
            if (!_verdicts.TryGetValue(key, out var verdict) || verdict.Yaml != yaml)
            {
                verdict = (yaml, Problem(key, yaml));
                _verdicts[key] = verdict;
            }
            if (verdict.Problem is null)
            {
                believed[key] = yaml;
            }
            else
            {
                refused.Add($"{ClusterObjects.Prefix}{key}: {verdict.Problem}");
            }
        }
        refused.Sort(StringComparer.Ordinal);
        var reason = refused.Count == 0 ? null : $"{refused.Count} stored object(s) not believed: {string.Join("; ", refused.Take(5))}" +
            (refused.Count > 5 ? "; …" : "");
        if (reason is null)
        {
            health.Resolved("stored objects");
        }
        else if (health.ProblemOf("stored objects") != reason)
        {
            health.Problem("stored objects", reason);
            ObjectsRefused(log, reason);
        }
        return believed;
    }

    internal static string? Problem(string key, string yaml)
    {
        var load = Policy.Api.ManifestLoader.LoadText(yaml, key);
        if (!load.IsValid)
        {
            return string.Join("; ", load.Errors.Take(3).Select(e => e.Message));
        }
        var set = load.Manifests;
        var keys = set.Namespaces.Select(n => $"Namespace/{n.Name}").Concat(set.Pods.Select(p => $"Pod/{p.Key}"))
            .Concat(set.Policies.Select(p => p.Origin.ToString())).ToList();
        return keys is [var only] && only == key ? null
            : $"holds {(keys.Count == 0 ? "no object" : string.Join(", ", keys.Take(3)))}, not {key}";
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
        Message = "the cluster's state at revision {Revision} is not enforced here (changed: {Changed}): {Reason}")]
    private static partial void NotEnforced(ILogger logger, long revision, string changed, string reason);

    [LoggerMessage(EventId = 45, Level = LogLevel.Error,
        Message = "the cluster's state at revision {Revision} is not enforced here (changed: {Changed}): an unexpected failure")]
    private static partial void NotEnforcedUnexpectedly(ILogger logger, long revision, string changed, Exception exception);

    [LoggerMessage(EventId = 52, Level = LogLevel.Warning, Message = "{Reason}")]
    private static partial void ObjectsRefused(ILogger logger, string reason);

    [LoggerMessage(EventId = 49, Level = LogLevel.Information,
        Message = "the cluster's state at revision {Revision} is enforced here again")]
    private static partial void Recovered(ILogger logger, long revision);
}
