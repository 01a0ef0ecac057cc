using System.Net;
using System.Threading.Channels;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Kvstore;
using Membrane.Policy.Workloads;

namespace Membrane.Agent;

/// <summary>
/// Cluster mode's exchange with the other nodes: their pods' addresses (the cluster's ipcache) become addresses of
/// peer endpoints in the engine and entries in the datapath's ipcache; this node's pods' addresses are offered for
/// publishing after every change.
/// </summary>
public sealed partial class AgentService
{
    /// <summary>
    /// Remote pods' addresses as their nodes published them, by "NODE POD": a pod gets only what the node its object
    /// names published for it, so no other node (nor a forged entry) can give its identity to an address.
    /// </summary>
    private Dictionary<string, IReadOnlyList<IPAddress>> _remoteAddresses = new(StringComparer.Ordinal);

    private readonly Channel<bool> _localChanged = Channel.CreateBounded<bool>(new BoundedChannelOptions(1)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
    });

    /// <summary>The nodes announced in the store (this one included): where pods without a node are placed.</summary>
    private IReadOnlyCollection<string> _readyNodes = [];

    /// <summary>Signalled after every change to this node's pods (their addresses or identities may have moved).</summary>
    public ChannelReader<bool> LocalEndpointsChanged => _localChanged.Reader;

    private readonly Channel<bool> _enforcementChanged = Channel.CreateBounded<bool>(new BoundedChannelOptions(1)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
    });

    /// <summary>Cluster mode: what this node enforces (null on one node); reported to the store for <c>apply</c> to wait on.</summary>
    public NodeEnforcement? Enforcement { get; private set; }

    /// <summary>Signalled when <see cref="Enforcement"/> changed.</summary>
    public ChannelReader<bool> EnforcementChanged => _enforcementChanged.Reader;

    /// <summary>The status snapshot and the signal to publish this node's pods; after every change, under the lock.</summary>
    private void PublishState()
    {
        Queries.Publish();
        _localChanged.Writer.TryWrite(true);
    }

    /// <summary>After every change, applied or undone, under the lock: status, publishing, and what this node enforces.</summary>
    private void AfterChange()
    {
        PublishState();
        UpdateEnforcement();
    }

    /// <summary>
    /// The latest store revision is enforced here when this node's endpoints and maps follow it (every change that
    /// returned did) and every pod of it on a node that is up has its addresses here (its node published them).
    /// </summary>
    private void UpdateEnforcement()
    {
        if (_options.Node is not { } node || _options.Etcd is null)
        {
            return;
        }
        var ready = _readyNodes.ToHashSet(StringComparer.Ordinal);
        var lacks = _engine.Endpoints
            .Where(e => !IsLocal(e.Pod) && e.Addresses.Count == 0 && e.Pod.NodeName is { } on && ready.Contains(on))
            .Select(e => $"the addresses of Pod/{e.Key} (on {e.Pod.NodeName})").Order(StringComparer.Ordinal).ToList();
        var seen = _store.Revision;
        Enforcement = new NodeEnforcement(node, lacks.Count == 0 ? seen : Math.Min(Enforcement?.Enforced ?? 0, seen), seen, lacks);
        _enforcementChanged.Writer.TryWrite(true);
    }

    /// <summary>This node's pods' addresses with identity and pod key (what the cluster's ipcache should hold for it).</summary>
    public Dictionary<IPAddress, (uint Identity, string Pod)> LocalEndpoints() =>
        _engine.Endpoints.Where(e => IsLocal(e.Pod)).SelectMany(e => e.Addresses.Select(a => (a, e.Identity.Id, e.Key)))
            .ToDictionary(x => x.a, x => (x.Id, x.Key));

    /// <summary>A pod of another node with the addresses its node published (none yet: a peer without addresses).</summary>
    private PodManifest WithRemoteAddresses(PodManifest pod) =>
        pod with { Addresses = _remoteAddresses.GetValueOrDefault($"{pod.NodeName} {pod.Key}") ?? [] };

    /// <summary>
    /// The other nodes' published pod addresses changed: peers get them (or lose them) and the datapath's ipcache
    /// follows, through the one change path. An address that one of this node's pods has is never taken from it.
    /// </summary>
    public Task ApplyRemoteEndpointsAsync(IReadOnlyDictionary<IPAddress, RemoteEndpoint> view, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(view);
        return ChangeAsync(ChangeSource.RemoteEndpoints, () =>
        {
            var local = LocalEndpoints();
            _remoteAddresses = view.Values.Where(e => !local.ContainsKey(e.Address)).GroupBy(e => $"{e.Node} {e.Pod}",
                    StringComparer.Ordinal)
                .ToDictionary(g => g.Key, g => (IReadOnlyList<IPAddress>)g.Select(e => e.Address).Order(AddressOrder.Instance).ToList(),
                    StringComparer.Ordinal);
            var changes = new List<ObjectChange>();
            foreach (var endpoint in _engine.Endpoints.Where(e => !IsLocal(e.Pod)).ToList())
            {
                var wanted = WithRemoteAddresses(endpoint.Pod);
                if (!wanted.Addresses.SequenceEqual(endpoint.Addresses))
                {
                    _engine.UpsertRemotePod(wanted);
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
        return ChangeAsync(ChangeSource.RemoteNodes, () =>
        {
            var namesChanged = !_readyNodes.ToHashSet(StringComparer.Ordinal).SetEquals(names);
            _readyNodes = names;
            if (_regenerator.RemoteNodes.SequenceEqual(addresses))
            {
                if (namesChanged)
                {
                    UpdateEnforcement(); // a node that went or came changes which peers' addresses are awaited
                }
                return null;
            }
            _regenerator.RemoteNodes = addresses;
            return [new ObjectChange("RemoteNodes", string.Join(" ", addresses))];
        }, cancel);
    }

    /// <summary>
    /// Cluster mode: the objects as the store holds them at <paramref name="revision"/> (delivered by the watch, other
    /// nodes' changes included) become this node's desired state and are enforced through the one change path;
    /// nothing is written to the store.
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
        await PrefetchNumbersAsync(objects, cancel).ConfigureAwait(false);
        await ChangeAsync(ChangeSource.Store, () =>
        {
            if ((!listing && revision < _store.Revision) || (revision == _store.Revision && SameObjects(objects)))
            {
                return null; // this node committed something newer (the watch catches up first), or has this already
            }
            var identities = PodIdentities();
            var addresses = PodAddresses();
            var before = _store.Objects;
            _store.Restore(new ObjectStoreSnapshot(objects, revision));
            RebuildEngine(identities, addresses);
            return objects.Where(o => !before.TryGetValue(o.Key, out var yaml) || yaml != o.Value)
                .Select(o => new ObjectChange(o.Key, before.ContainsKey(o.Key) ? "updated" : "created"))
                .Concat(before.Keys.Where(k => !objects.ContainsKey(k)).Select(k => new ObjectChange(k, "deleted"))).ToList();
        }, cancel).ConfigureAwait(false);
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

    private bool SameObjects(IReadOnlyDictionary<string, string> objects) =>
        objects.Count == _store.Objects.Count && objects.All(o => _store.Objects.TryGetValue(o.Key, out var yaml) && yaml == o.Value);

    private sealed class AddressOrder : IComparer<IPAddress>
    {
        public static AddressOrder Instance { get; } = new();

        public int Compare(IPAddress? x, IPAddress? y) =>
            string.CompareOrdinal(x?.ToString(), y?.ToString());
    }
}
