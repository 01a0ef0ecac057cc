using System.Globalization;
using System.Net;

namespace Membrane.Kvstore;

/// <summary>A pod address somewhere in the cluster: its identity, the node that hosts it and that node's address, the pod.</summary>
public sealed record RemoteEndpoint(IPAddress Address, uint Identity, string Node, IPAddress NodeAddress, string Pod)
{
    /// <summary>The lease the entry is held by in the store (0: none).</summary>
    public long Lease { get; init; }
}

/// <summary>A node of the cluster: its underlay address and the prefixes its pods' addresses come from.</summary>
public sealed record ClusterNode(string Name, IPAddress Address, IReadOnlyList<IPNetwork> PodRanges)
{
    /// <summary>The lease the announcement is held by (0: none).</summary>
    public long Lease { get; init; }
}

/// <summary>
/// Nodes and the cluster's ipcache in the store, as the reference system keeps them: <c>membrane/nodes/NODE</c>
/// (underlay address and pod CIDRs) and <c>membrane/ipcache/ADDRESS</c> (identity, node, node address, pod), each on the
/// owner node's lease, so a node that dies takes its entries with it once its lease expires. Publishing goes
/// through the node's <see cref="NodeSession"/> (written again on a new lease); every node follows the others'
/// entries with a <see cref="PrefixWatcher"/>.
/// </summary>
public sealed class ClusterIpCache(EtcdConnection etcd, NodeSession session, string node, IPAddress nodeAddress)
{
    public const string NodesPrefix = "membrane/nodes/";
    public const string Prefix = "membrane/ipcache/";

    /// <summary><c>membrane/ipcache/NODE/ADDRESS</c>: under the node's name, so access control can give each node only its own.</summary>
    public static string Key(string node, IPAddress address) => $"{Prefix}{node}/{address}";

    /// <summary>Announces the node (its underlay address and pod ranges) on its lease.</summary>
    public Task AnnounceAsync(IEnumerable<IPNetwork> podRanges, CancellationToken cancel = default) =>
        session.PutAsync(NodesPrefix + node, $"{nodeAddress} {string.Join(',', podRanges)}", cancel);

    public Task PublishAsync(IPAddress address, uint identity, string pod, CancellationToken cancel = default) =>
        session.PutAsync(Key(node, address), string.Create(CultureInfo.InvariantCulture, $"{identity} {node} {nodeAddress} {pod}"), cancel);

    public Task WithdrawAsync(IPAddress address, CancellationToken cancel = default) => session.DeleteAsync(Key(node, address), cancel);

    /// <summary>
    /// Parses an entry; null when it is not one (a malformed value, or a value naming another node than its key, is
    /// ignored rather than trusted).
    /// </summary>
    public static RemoteEndpoint? Parse(string key, string value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        var parts = value.Split(' ');
        var path = key.StartsWith(Prefix, StringComparison.Ordinal) ? key[Prefix.Length..].Split('/') : [];
        return path.Length == 2 && parts.Length == 4 && parts[1] == path[0]
            && IPAddress.TryParse(path[1], out var address)
            && uint.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var identity)
            && IPAddress.TryParse(parts[2], out var host) && parts[3].Count(c => c == '/') == 1
            ? new RemoteEndpoint(address, identity, parts[1], host, parts[3])
            : null;
    }

    /// <summary>Parses a node entry; null when it is not one.</summary>
    public static ClusterNode? ParseNode(string key, string value)
    {
        ArgumentNullException.ThrowIfNull(key);
        ArgumentNullException.ThrowIfNull(value);
        var parts = value.Split(' ');
        if (!key.StartsWith(NodesPrefix, StringComparison.Ordinal) || parts.Length != 2 || !IPAddress.TryParse(parts[0], out var address))
        {
            return null;
        }
        var ranges = new List<IPNetwork>();
        foreach (var range in parts[1].Split(',', StringSplitOptions.RemoveEmptyEntries))
        {
            if (!IPNetwork.TryParse(range, out var network))
            {
                return null;
            }
            ranges.Add(network);
        }
        return new ClusterNode(key[NodesPrefix.Length..], address, ranges);
    }

    /// <summary>Follows the cluster's nodes (this one included): the current view after each batch of changes.</summary>
    public async IAsyncEnumerable<IReadOnlyDictionary<string, ClusterNode>> FollowNodesAsync(
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancel = default)
    {
        var events = new PrefixWatcher(etcd, NodesPrefix).Start(cancel);
        var view = new Dictionary<string, ClusterNode>(StringComparer.Ordinal);
        while (await events.WaitToReadAsync(cancel).ConfigureAwait(false))
        {
            while (events.TryRead(out var change))
            {
                switch (change)
                {
                    case StoreSnapshot snapshot:
                        view.Clear();
                        foreach (var (key, value) in snapshot.Items)
                        {
                            if (ParseNode(key, value) is { } entry)
                            {
                                view[entry.Name] = entry with { Lease = snapshot.Leases.GetValueOrDefault(key) };
                            }
                        }
                        break;
                    case StorePut put:
                        if (ParseNode(put.Key, put.Value) is { } added)
                        {
                            view[added.Name] = added with { Lease = put.Lease };
                        }
                        else
                        {
                            view.Remove(put.Key[NodesPrefix.Length..]);
                        }
                        break;
                    case StoreDelete delete:
                        view.Remove(delete.Key[NodesPrefix.Length..]);
                        break;
                }
            }
            yield return new Dictionary<string, ClusterNode>(view, StringComparer.Ordinal);
        }
    }

    /// <summary>
    /// Follows every node's entries: the current view after each batch of changes (a listing replaces it). Entries
    /// of this node are left out (it knows its own pods).
    /// </summary>
    public async IAsyncEnumerable<IReadOnlyList<RemoteEndpoint>> FollowAsync(
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancel = default)
    {
        var events = new PrefixWatcher(etcd, Prefix).Start(cancel);
        var view = new Dictionary<string, RemoteEndpoint>(StringComparer.Ordinal);
        while (await events.WaitToReadAsync(cancel).ConfigureAwait(false))
        {
            while (events.TryRead(out var change))
            {
                Take(change, view);
            }
            yield return [.. view.Values];
        }
    }

    private void Take(StoreEvent change, Dictionary<string, RemoteEndpoint> view)
    {
        switch (change)
        {
            case StoreSnapshot snapshot:
                view.Clear();
                foreach (var (key, value) in snapshot.Items)
                {
                    Add(key, value, snapshot.Leases.GetValueOrDefault(key), view);
                }
                break;
            case StorePut put:
                Add(put.Key, put.Value, put.Lease, view);
                break;
            case StoreDelete delete:
                view.Remove(delete.Key);
                break;
        }
    }

    private void Add(string key, string value, long lease, Dictionary<string, RemoteEndpoint> view)
    {
        if (Parse(key, value) is { } entry && entry.Node != node)
        {
            view[key] = entry with { Lease = lease };
        }
        else
        {
            view.Remove(key); // overwritten with something that is no entry: the old entry is gone
        }
    }

    /// <summary>
    /// Splits node announcements into those to believe and those not, with why: an announcement must be held by a
    /// lease, and no two nodes may share an address, overlap in pod ranges, or have an address inside another's pod range.
    /// Both sides of a conflict are refused, except <paramref name="self"/>'s own announcement (this node knows its own).
    /// </summary>
    public static (Dictionary<string, ClusterNode> Believed, List<string> Refused) ValidateNodes(
        IReadOnlyDictionary<string, ClusterNode> nodes, string self)
    {
        ArgumentNullException.ThrowIfNull(nodes);
        var believed = new Dictionary<string, ClusterNode>(StringComparer.Ordinal);
        var refused = new List<string>();
        static bool Overlap(IPNetwork a, IPNetwork b) => a.Contains(b.BaseAddress) || b.Contains(a.BaseAddress);
        foreach (var node in nodes.Values.OrderBy(n => n.Name, StringComparer.Ordinal))
        {
            var conflict = nodes.Values.Where(o => o.Name != node.Name).Select(o =>
                    o.Address.Equals(node.Address) ? $"shares its address {node.Address} with node {o.Name}"
                    : node.PodRanges.Where(r => o.PodRanges.Any(q => Overlap(r, q))).Select(r => (IPNetwork?)r).FirstOrDefault()
                        is { } range
                        ? $"pod range {range} overlaps node {o.Name}'s"
                    : o.PodRanges.Any(r => r.Contains(node.Address)) ? $"its address {node.Address} is in node {o.Name}'s pod ranges"
                    : null)
                .FirstOrDefault(p => p is not null);
            var problem = node.Name == self ? null
                : node.Lease == 0 ? "not held by a lease"
                : conflict; // a node without an underlay announces its pod range's gateway: inside its own range is fine
            if (problem is null)
            {
                believed[node.Name] = node;
            }
            else
            {
                refused.Add($"{NodesPrefix}{node.Name}: {problem}");
            }
        }
        return (believed, refused);
    }

    /// <summary>
    /// Splits other nodes' entries into those to believe and those not, with why: an entry is believed only when its
    /// node is announced, the entry is held by that node's lease (written by that node's agent, gone with it), its
    /// address lies in that node's pod ranges, its node address is that node's and (given <paramref name="allocated"/>,
    /// the numbers the store holds) its identity is an allocated one. Nothing else about a value in the store is taken
    /// on trust.
    /// </summary>
    public static (Dictionary<IPAddress, RemoteEndpoint> Believed, List<string> Refused) Validate(
        IEnumerable<RemoteEndpoint> entries, IReadOnlyDictionary<string, ClusterNode> nodes, IReadOnlySet<uint>? allocated = null)
    {
        ArgumentNullException.ThrowIfNull(entries);
        ArgumentNullException.ThrowIfNull(nodes);
        var believed = new Dictionary<IPAddress, RemoteEndpoint>();
        var refused = new List<string>();
        foreach (var entry in entries.OrderBy(e => Key(e.Node, e.Address), StringComparer.Ordinal))
        {
            var address = entry.Address;
            var problem = !nodes.TryGetValue(entry.Node, out var owner) ? $"node {entry.Node} is not announced"
                : entry.Lease == 0 || entry.Lease != owner.Lease ? $"not held by node {entry.Node}'s lease"
                : !owner.PodRanges.Any(r => r.Contains(address)) ? $"outside node {entry.Node}'s pod ranges"
                : !entry.NodeAddress.Equals(owner.Address) ? $"node address {entry.NodeAddress} is not node {entry.Node}'s"
                : allocated is not null && !allocated.Contains(entry.Identity) ? $"identity {entry.Identity} is not allocated in the store"
                : believed.TryGetValue(address, out var first) ? $"{address} is already node {first.Node}'s pod {first.Pod}"
                : null;
            if (problem is null)
            {
                believed[address] = entry;
            }
            else
            {
                refused.Add($"{Key(entry.Node, address)} ({entry.Pod}): {problem}");
            }
        }
        refused.Sort(StringComparer.Ordinal);
        return (believed, refused);
    }
}
