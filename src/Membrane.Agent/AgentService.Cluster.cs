using System.Net;
using System.Threading.Channels;
using Membrane.Agent.State;
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
    /// <summary>Remote pods' addresses by pod key, as their nodes published them.</summary>
    private Dictionary<string, IReadOnlyList<IPAddress>> _remoteAddresses = new(StringComparer.Ordinal);

    private readonly Channel<bool> _localChanged = Channel.CreateBounded<bool>(new BoundedChannelOptions(1)
    {
        FullMode = BoundedChannelFullMode.DropWrite,
    });

    /// <summary>The nodes announced in the store (this one included): where pods without a node are placed.</summary>
    private IReadOnlyCollection<string> _readyNodes = [];

    /// <summary>The cluster's announced nodes changed.</summary>
    public void SetReadyNodes(IReadOnlyCollection<string> nodes) => _readyNodes = nodes;

    /// <summary>Signalled after every change to this node's pods (their addresses or identities may have moved).</summary>
    public ChannelReader<bool> LocalEndpointsChanged => _localChanged.Reader;

    /// <summary>The status snapshot and the signal to publish this node's pods; after every change, under the lock.</summary>
    private void PublishState()
    {
        Queries.Publish();
        _localChanged.Writer.TryWrite(true);
    }

    /// <summary>This node's pods' addresses with identity and pod key (what the cluster's ipcache should hold for it).</summary>
    public Dictionary<IPAddress, (uint Identity, string Pod)> LocalEndpoints() =>
        _engine.Endpoints.Where(e => IsLocal(e.Pod)).SelectMany(e => e.Addresses.Select(a => (a, e.Identity.Id, e.Key)))
            .ToDictionary(x => x.a, x => (x.Id, x.Key));

    /// <summary>A pod of another node with the addresses its node published (none yet: a peer without addresses).</summary>
    private PodManifest WithRemoteAddresses(PodManifest pod) =>
        pod with { Addresses = _remoteAddresses.GetValueOrDefault(pod.Key) ?? [] };

    /// <summary>
    /// The other nodes' published pod addresses changed: peers get them (or lose them) and the datapath's ipcache
    /// follows. An address that one of this node's pods has is never taken from it.
    /// </summary>
    public async Task ApplyRemoteEndpointsAsync(IReadOnlyDictionary<IPAddress, RemoteEndpoint> view, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(view);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var local = LocalEndpoints();
            _remoteAddresses = view.Values.Where(e => !local.ContainsKey(e.Address)).GroupBy(e => e.Pod, StringComparer.Ordinal)
                .ToDictionary(g => g.Key, g => (IReadOnlyList<IPAddress>)g.Select(e => e.Address).Order(AddressOrder.Instance).ToList(),
                    StringComparer.Ordinal);
            var changed = false;
            foreach (var endpoint in _engine.Endpoints.Where(e => !IsLocal(e.Pod)).ToList())
            {
                var wanted = WithRemoteAddresses(endpoint.Pod);
                if (!wanted.Addresses.SequenceEqual(endpoint.Addresses))
                {
                    _engine.UpsertRemotePod(wanted);
                    changed = true;
                }
            }
            if (changed)
            {
                _regenerator.Regenerate(_engine, _regenerator.Plan(_engine), attachAll: false);
                Queries.Publish();
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>The other nodes' own addresses changed: the ipcache gives them the remote-node identity.</summary>
    public async Task ApplyRemoteNodesAsync(IReadOnlyList<IPAddress> addresses, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(addresses);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            if (!_regenerator.RemoteNodes.SequenceEqual(addresses))
            {
                _regenerator.RemoteNodes = addresses;
                _regenerator.Regenerate(_engine, _regenerator.Plan(_engine), attachAll: false);
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// Cluster mode: the objects as the store holds them at <paramref name="revision"/> (delivered by the watch, other
    /// nodes' changes included) become this node's desired state and are enforced; nothing is written to the store.
    /// </summary>
    /// <remarks>
    /// A state older than this node's last commit waits for the watch to catch up, unless it is a full listing
    /// (<paramref name="listing"/>): that is the store's whole truth (at start, after a compaction, or a store
    /// recreated with lower revisions) and always wins.
    /// </remarks>
    public async Task ApplyStoreStateAsync(IReadOnlyDictionary<string, string> objects, long revision, bool listing = false,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(objects);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            if ((!listing && revision < _store.Revision) || (revision == _store.Revision && SameObjects(objects)))
            {
                return; // this node committed something newer: the watch catches up first
            }
            var before = new Snapshot(_store.Snapshot(), PodIdentities(), PodAddresses(), _attachments?.Snapshot());
            try
            {
                _store.Restore(new ObjectStoreSnapshot(objects, revision));
                RebuildEngine(before.Identities, before.Addresses);
                var plan = _regenerator.Plan(_engine);
                Save();
                if (Enforce(plan, attachAll: false))
                {
                    Save();
                }
                PublishState();
            }
            catch (Exception)
            {
                Rollback(before, persisted: true);
                PublishState();
                throw;
            }
        }
        finally
        {
            _gate.Release();
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
