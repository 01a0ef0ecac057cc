using System.Globalization;
using Etcdserverpb;

namespace Membrane.Kvstore;

/// <summary>
/// What one node enforces: the highest store revision it has fully enforced (its endpoints, its policy maps, and the
/// addresses of every pod of that revision on a node that is up), the latest revision it has seen, and what it
/// still lacks for that one (empty when it is enforced).
/// </summary>
public sealed record NodeEnforcement(string Node, long Enforced, long Seen, IReadOnlyList<string> Lacks);

/// <summary>
/// Each node reports what it enforces under <c>membrane/enforced/NODE</c> on its lease (a node that is down has no
/// report); a change made on any node is enforced by the cluster when every announced node reports its revision.
/// Value: <c>ENFORCED SEEN</c> on the first line, then one line per thing lacking.
/// </summary>
public static class ClusterEnforcement
{
    public const string Prefix = "membrane/enforced/";

    private static readonly TimeSpan RetryDelay = TimeSpan.FromMilliseconds(100);

    public static Task ReportAsync(NodeSession session, NodeEnforcement state, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(session);
        ArgumentNullException.ThrowIfNull(state);
        return session.PutAsync(Prefix + state.Node, Format(state), cancel);
    }

    public static string Format(NodeEnforcement state)
    {
        ArgumentNullException.ThrowIfNull(state);
        return string.Join('\n', state.Lacks.Select(l => l.Replace('\n', ' ')).Prepend(
            string.Create(CultureInfo.InvariantCulture, $"{state.Enforced} {state.Seen}")));
    }

    /// <summary>Parses a report; null when the value is not one (never trusted further than its shape).</summary>
    public static NodeEnforcement? Parse(string key, string value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        var lines = value.Split('\n');
        var head = lines[0].Split(' ');
        return key.StartsWith(Prefix, StringComparison.Ordinal) && head.Length == 2
            && long.TryParse(head[0], NumberStyles.None, CultureInfo.InvariantCulture, out var enforced)
            && long.TryParse(head[1], NumberStyles.None, CultureInfo.InvariantCulture, out var seen)
            ? new NodeEnforcement(key[Prefix.Length..], enforced, seen, lines[1..])
            : null;
    }

    /// <summary>
    /// The announced nodes (those whose lease is alive) with their reports; a node that has not reported yet appears
    /// with revision 0 and says so.
    /// </summary>
    public static async Task<IReadOnlyList<NodeEnforcement>> ReadAsync(EtcdConnection etcd, CancellationToken cancel = default) =>
        (await ReadAtAsync(etcd, cancel).ConfigureAwait(false)).Nodes;

    private static async Task<(IReadOnlyList<NodeEnforcement> Nodes, long Revision)> ReadAtAsync(EtcdConnection etcd,
        CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(etcd);
        var nodes = await etcd.ListAsync(ClusterIpCache.NodesPrefix, cancel).ConfigureAwait(false);
        var reports = await etcd.ListAsync(Prefix, cancel).ConfigureAwait(false);
        var byNode = reports.Items.Select(kv => Parse(kv.Key.ToStringUtf8(), kv.Value.ToStringUtf8())).OfType<NodeEnforcement>()
            .ToDictionary(r => r.Node, StringComparer.Ordinal);
        return (nodes.Items.Select(kv => kv.Key.ToStringUtf8()[ClusterIpCache.NodesPrefix.Length..]).Order(StringComparer.Ordinal)
            .Select(n => byNode.GetValueOrDefault(n) ?? new NodeEnforcement(n, 0, 0, ["no report from this node yet"])).ToList(),
            Math.Min(nodes.Revision, reports.Revision));
    }

    /// <summary>
    /// Waits until every announced node has enforced <paramref name="revision"/> or <paramref name="timeout"/> passes;
    /// returns whether it did and the nodes as last read.
    /// </summary>
    public static async Task<(bool Enforced, IReadOnlyList<NodeEnforcement> Nodes)> WaitAsync(EtcdConnection etcd, long revision,
        TimeSpan timeout, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(etcd);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(timeout);
        IReadOnlyList<NodeEnforcement> nodes = [];
        // Watch the reports from the revision read: any report or node change wakes the check at once.
        while (true)
        {
            long read;
            try
            {
                (nodes, read) = await ReadAtAsync(etcd, deadline.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (EtcdConnection.CancelledBy(e, deadline.Token) && !cancel.IsCancellationRequested)
            {
                return (false, nodes);
            }
            catch (Grpc.Core.RpcException) when (!deadline.IsCancellationRequested)
            {
                // A member went away under the read: the store answers again from another one.
                await Task.Delay(RetryDelay, deadline.Token).ConfigureAwait(false);
                continue;
            }
            if (nodes.All(n => n.Enforced >= revision))
            {
                return (true, nodes);
            }
            try
            {
                await NextChangeAsync(etcd, read, deadline.Token).ConfigureAwait(false);
            }
            catch (Exception e) when (EtcdConnection.CancelledBy(e, deadline.Token) && !cancel.IsCancellationRequested)
            {
                return (false, nodes);
            }
            catch (Grpc.Core.RpcException) when (!deadline.IsCancellationRequested)
            {
                await Task.Delay(RetryDelay, deadline.Token).ConfigureAwait(false);
            }
        }
    }

    /// <summary>Returns at the first change of a report or of the node list after <paramref name="revision"/>.</summary>
    private static async Task NextChangeAsync(EtcdConnection etcd, long revision, CancellationToken cancel)
    {
        using var call = etcd.Watch.Watch(cancellationToken: cancel);
        foreach (var prefix in new[] { Prefix, ClusterIpCache.NodesPrefix })
        {
            await call.RequestStream.WriteAsync(new WatchRequest
            {
                CreateRequest = new WatchCreateRequest
                {
                    Key = EtcdConnection.Bytes(prefix),
                    RangeEnd = EtcdConnection.RangeEnd(prefix),
                    StartRevision = revision + 1,
                },
            }, cancel).ConfigureAwait(false);
        }
        while (await call.ResponseStream.MoveNext(cancel).ConfigureAwait(false))
        {
            if (call.ResponseStream.Current.Events.Count > 0 || call.ResponseStream.Current.CompactRevision > 0
                || call.ResponseStream.Current.Canceled)
            {
                return;
            }
        }
    }
}
