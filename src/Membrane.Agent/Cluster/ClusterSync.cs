using System.Net;
using System.Threading.Channels;
using Membrane.Agent.Changes;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Kvstore;

namespace Membrane.Agent.Cluster;

/// <summary>
/// Cluster mode's exchange with the other nodes, through the one change path: the store's objects (the watch), other
/// nodes' pods' addresses (the cluster's ipcache) and announced nodes come in; this node's pods' addresses and what
/// it enforces go out (signalled after every change for the publishing loops).
/// </summary>
public sealed class ClusterSync(ChangeCoordinator coordinator, ClusterNumbers? numbers, string node) : IChangeObserver
{
    private readonly Channel<bool> _localChanged = Channel.CreateBounded<bool>(new BoundedChannelOptions(1)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
    });

    private readonly Channel<bool> _enforcementChanged = Channel.CreateBounded<bool>(new BoundedChannelOptions(1)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
    });

    private DesiredState State => coordinator.State;

    /// <summary>Signalled after every change to this node's pods (their addresses or identities may have moved).</summary>
    public ChannelReader<bool> LocalEndpointsChanged => _localChanged.Reader;

    /// <summary>What this node enforces; reported to the store for <c>apply</c> to wait on.</summary>
    public NodeEnforcement? Enforcement { get; private set; }

    /// <summary>Signalled when <see cref="Enforcement"/> changed.</summary>
    public ChannelReader<bool> EnforcementChanged => _enforcementChanged.Reader;

    public void Changed()
    {
        _localChanged.Writer.TryWrite(true);
        UpdateEnforcement();
    }

    /// <summary>
    /// The store's state could not be enforced here: what this node reports (the cluster's <c>apply</c> waits on it)
    /// says so; it keeps enforcing its last good state.
    /// </summary>
    public void NotEnforced(long revision, string reason)
    {
        if (Enforcement is { } current)
        {
            Enforcement = current with { Seen = Math.Max(current.Seen, revision), Lacks = [$"not enforced: {reason}"] };
            _enforcementChanged.Writer.TryWrite(true);
        }
    }

    /// <summary>
    /// The latest store revision is enforced here when this node's endpoints and maps follow it (every change that
    /// returned did) and every pod of it on a node that is up has its addresses here (its node published them).
    /// </summary>
    private void UpdateEnforcement()
    {
        var ready = State.ReadyNodes.ToHashSet(StringComparer.Ordinal);
        var lacks = State.Engine.Endpoints
            .Where(e => !State.IsLocal(e.Pod) && e.Addresses.Count == 0 && e.Pod.NodeName is { } on && ready.Contains(on))
            .Select(e => $"the addresses of Pod/{e.Key} (on {e.Pod.NodeName})").Order(StringComparer.Ordinal).ToList();
        var seen = State.Store.Revision;
        Enforcement = new NodeEnforcement(node, lacks.Count == 0 ? seen : Math.Min(Enforcement?.Enforced ?? 0, seen), seen, lacks);
        _enforcementChanged.Writer.TryWrite(true);
    }

    /// <summary>This node's pods' addresses with identity and pod key (what the cluster's ipcache should hold for it).</summary>
    public Dictionary<IPAddress, (uint Identity, string Pod)> LocalEndpoints() =>
        State.LocalEndpoints.SelectMany(e => e.Addresses.Select(a => (a, e.Identity.Id, e.Key))).ToDictionary(x => x.a, x => (x.Id, x.Key));

    /// <summary>
    /// The other nodes' published pod addresses changed: peers get them (or lose them) and the datapath's ipcache
    /// follows. An address that one of this node's pods has is never taken from it.
    /// </summary>
    public Task ApplyRemoteEndpointsAsync(IReadOnlyDictionary<IPAddress, RemoteEndpoint> view, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(view);
        return coordinator.ChangeAsync(ChangeSource.RemoteEndpoints, () =>
        {
            var local = LocalEndpoints();
            State.RemoteAddresses = view.Values.Where(e => !local.ContainsKey(e.Address)).GroupBy(e => $"{e.Node} {e.Pod}",
                    StringComparer.Ordinal)
                .ToDictionary(g => g.Key, g => (IReadOnlyList<IPAddress>)g.Select(e => e.Address).OrderBy(a => a.ToString(),
                    StringComparer.Ordinal).ToList(), StringComparer.Ordinal);
            var changes = new List<ObjectChange>();
            foreach (var endpoint in State.Engine.Endpoints.Where(e => !State.IsLocal(e.Pod)).ToList())
            {
                var wanted = State.WithRemoteAddresses(endpoint.Pod);
                if (!wanted.Addresses.SequenceEqual(endpoint.Addresses))
                {
                    State.Engine.UpsertRemotePod(wanted);
                    changes.Add(new ObjectChange($"Peer/{endpoint.Key}", wanted.Addresses.Count == 0 ? "no addresses"
                        : string.Join(" ", wanted.Addresses)));
                }
            }
            return changes.Count == 0 ? null : changes;
        }, cancel);
    }

    /// <summary>
    /// The cluster's announced nodes changed: pods without a node are placed on them, and the other nodes' own
    /// addresses get the remote-node identity in the ipcache.
    /// </summary>
    public Task ApplyRemoteNodesAsync(IReadOnlyCollection<string> names, IReadOnlyList<IPAddress> addresses,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(names);
        ArgumentNullException.ThrowIfNull(addresses);
        return coordinator.ChangeAsync(ChangeSource.RemoteNodes, () =>
        {
            var namesChanged = !State.ReadyNodes.ToHashSet(StringComparer.Ordinal).SetEquals(names);
            State.ReadyNodes = names;
            if (State.RemoteNodes.SequenceEqual(addresses))
            {
                if (namesChanged)
                {
                    UpdateEnforcement(); // a node that went or came changes which peers' addresses are awaited
                }
                return null;
            }
            State.RemoteNodes = addresses;
            return [new ObjectChange("RemoteNodes", string.Join(" ", addresses))];
        }, cancel);
    }

    /// <summary>
    /// The objects as the store holds them at <paramref name="revision"/> (delivered by the watch, other nodes' changes
    /// included) become this node's desired state; nothing is written to the store.
    /// </summary>
    /// <remarks>
    /// A state older than this node's last commit waits for the watch to catch up, unless it is a full listing
    /// (<paramref name="listing"/>): that is the store's whole truth (at start, after a compaction, or a store
    /// recreated with lower revisions) and always wins. Identity numbers for the state's pods are obtained from the
    /// store before the lock is taken.
    /// </remarks>
    public async Task ApplyStoreStateAsync(IReadOnlyDictionary<string, string> objects, long revision, bool listing = false,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(objects);
        if (State.Attachments is null && numbers is not null)
        {
            await numbers.PrefetchAsync(objects, cancel).ConfigureAwait(false);
        }
        await coordinator.ChangeAsync(ChangeSource.Store, () =>
        {
            var store = State.Store;
            if ((!listing && revision < store.Revision) || (revision == store.Revision && SameObjects(store.Objects, objects)))
            {
                return null; // this node committed something newer (the watch catches up first), or has this already
            }
            var identities = State.PodIdentities();
            var addresses = State.PodAddresses();
            var before = store.Objects.ToDictionary(StringComparer.Ordinal);
            store.Restore(new ObjectStoreSnapshot(objects, revision));
            State.Rebuild(identities, addresses);
            return objects.Where(o => !before.TryGetValue(o.Key, out var yaml) || yaml != o.Value)
                .Select(o => new ObjectChange(o.Key, before.ContainsKey(o.Key) ? "updated" : "created"))
                .Concat(before.Keys.Where(k => !objects.ContainsKey(k)).Select(k => new ObjectChange(k, "deleted"))).ToList();
        }, cancel).ConfigureAwait(false);
    }

    private static bool SameObjects(IReadOnlyDictionary<string, string> mine, IReadOnlyDictionary<string, string> objects) =>
        objects.Count == mine.Count && objects.All(o => mine.TryGetValue(o.Key, out var yaml) && yaml == o.Value);
}
