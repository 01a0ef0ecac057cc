using System.Diagnostics;
using System.Net;
using Membrane.Agent.Cni;
using Membrane.Agent.Regeneration;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Datapath.Ebpf;
using Membrane.Policy.Identity;
using Membrane.Policy.Labels;

namespace Membrane.Agent;

/// <summary>The agent's changes: one commit path (validate in memory, plan, persist, enforce) with rollback.</summary>
public sealed partial class AgentService
{
    // ---- changes: one path for all of them ----

    /// <summary>Where a change comes from: every source takes the same path, with the same rollback.</summary>
    private enum ChangeSource
    {
        /// <summary>A request of the API (apply, delete, policy import/delete, reset): committed to the object store.</summary>
        Api,

        /// <summary>A container runtime's CNI request, or its labels: committed with the attachments.</summary>
        Cni,

        /// <summary>Cluster mode: the store's objects as the watch delivered them; adopted, not committed again.</summary>
        Store,

        /// <summary>Cluster mode: other nodes' pod addresses (the cluster's ipcache); not persisted.</summary>
        RemoteEndpoints,

        /// <summary>Cluster mode: the other nodes' own addresses; not persisted.</summary>
        RemoteNodes,
    }

    /// <summary>What a change was before it began, to put everything back if it fails.</summary>
    private sealed record Snapshot(ObjectStoreSnapshot Objects, List<(uint Id, LabelSet Labels)> Identities,
        Dictionary<string, IReadOnlyList<IPAddress>> Addresses, List<CniAttachment>? Attachments,
        Dictionary<string, IReadOnlyList<IPAddress>> RemoteAddresses, IReadOnlyList<IPAddress> RemoteNodes);

    private Task<ApplyResponse> CommitAsync(Func<List<ObjectChange>> change, CancellationToken cancel,
        ChangeSource source = ChangeSource.Api) => ChangeAsync(source, change, cancel);

    /// <summary>
    /// Runs one change under the lock. <paramref name="change"/> validates and changes the desired state in memory
    /// only (engine, object store, peers), or returns null when there is nothing to do; then the maps are planned
    /// (their capacity checked before anything is written), the state is committed and persisted (API and CNI
    /// changes; a store state is adopted and persisted; other nodes' addresses are not persisted), and only then the
    /// endpoints and the kernel follow. Any failure puts memory, endpoints, kernel and disk back as they were: nothing
    /// is enforced that is not remembered, nothing remembered that was refused. Cancellation is honoured until the
    /// change is persisted; after that it runs to the end. Every change is logged once with its revision.
    /// </summary>
    private async Task<ApplyResponse> ChangeAsync(ChangeSource source, Func<List<ObjectChange>?> change, CancellationToken cancel)
    {
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var before = new Snapshot(_store.Snapshot(), PodIdentities(), PodAddresses(), _attachments?.Snapshot(), _remoteAddresses,
                _regenerator.RemoteNodes);
            var endpointsBefore = _endpoints.Records.Keys.ToHashSet(StringComparer.Ordinal);
            var persisted = false;
            long? committed = null;
            List<ObjectChange> made = [];
            var persists = source is ChangeSource.Api or ChangeSource.Cni or ChangeSource.Store;
            try
            {
                if (change() is not { } changes)
                {
                    return new ApplyResponse(_store.Revision, [], _options.Etcd is null ? null : _options.Node);
                }
                made = changes;
                var plan = _regenerator.Plan(_engine);
                cancel.ThrowIfCancellationRequested();
                var revision = source is ChangeSource.Api or ChangeSource.Cni ? _store.Commit() : _store.Revision;
                committed = source is ChangeSource.Api or ChangeSource.Cni ? revision : null;
                if (persists)
                {
                    Save();
                    persisted = true;
                }
                if (Enforce(plan, attachAll: false) && persists)
                {
                    Save(); // the records of endpoints just created
                }
                AfterChange();
#pragma warning disable CA1873 // one line per change, the point of the log; its cost is the change's, not the packets'
                Log.Changed(_log, source.ToString(), revision, Describe(changes), Touched(endpointsBefore));
#pragma warning restore CA1873
                return new ApplyResponse(revision, changes, _options.Etcd is null ? null : _options.Node);
            }
            catch (Exception e)
            {
                Rollback(before, persisted);
                AfterChange();
                Log.ChangeRefused(_log, source.ToString(), _store.Revision, e.Message);
                if (committed is { } revision && _options.Etcd is not null)
                {
                    // The cluster's store has the change: it is the cluster's now, and reported as made. This node keeps
                    // its last good state, says so to the cluster (apply's wait names it), and the watch retries it.
                    NotEnforced(revision, e.Message);
                    return new ApplyResponse(revision, made, _options.Node);
                }
                throw;
            }
        }
        finally
        {
            _gate.Release();
        }
    }

    private static string Describe(List<ObjectChange> changes) => changes.Count switch
    {
        0 => "no object",
        <= 8 => string.Join(", ", changes.Select(c => $"{c.ObjectName} {c.Action}")),
        _ => $"{string.Join(", ", changes.Take(8).Select(c => $"{c.ObjectName} {c.Action}"))} and {changes.Count - 8} more",
    };

    /// <summary>The endpoints a change created and removed, for its log line.</summary>
    private string Touched(HashSet<string> before)
    {
        var now = _endpoints.Records.Keys.ToHashSet(StringComparer.Ordinal);
        var created = now.Where(k => !before.Contains(k)).Order(StringComparer.Ordinal).ToList();
        var removed = before.Where(k => !now.Contains(k)).Order(StringComparer.Ordinal).ToList();
        return created.Count + removed.Count == 0 ? "none created or removed"
            : string.Join("; ", new[] { created.Count > 0 ? $"created {string.Join(", ", created)}" : null,
                removed.Count > 0 ? $"removed {string.Join(", ", removed)}" : null }.Where(x => x is not null));
    }

    /// <summary>Endpoints created or removed as the engine says, then the kernel: true when endpoints were created.</summary>
    private bool Enforce(RegenerationPlan plan, bool attachAll)
    {
        var watch = Stopwatch.StartNew();
        try
        {
            var created = _endpoints.Reconcile(_engine.Endpoints.Where(e => IsLocal(e.Pod)));
            _regenerator.Regenerate(_engine, plan, attachAll);
            Queries.LastRegenerationMilliseconds = watch.Elapsed.TotalMilliseconds;
            Monitoring.AgentMetrics.RegenerationSeconds.WithLabels("success").Observe(watch.Elapsed.TotalSeconds);
            return created;
        }
        catch
        {
            Monitoring.AgentMetrics.RegenerationSeconds.WithLabels("failure").Observe(watch.Elapsed.TotalSeconds);
            throw;
        }
    }

    private void Rollback(Snapshot before, bool persisted)
    {
        _store.Restore(before.Objects);
        _attachments?.Restore(before.Attachments ?? []);
        _remoteAddresses = before.RemoteAddresses;
        _regenerator.RemoteNodes = before.RemoteNodes;
        try
        {
            RebuildEngine(before.Identities, before.Addresses);
            Enforce(_regenerator.Plan(_engine), attachAll: false);
            if (persisted)
            {
                Save();
            }
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or BpfException
                                   or AgentInputException)
        {
            // Memory is back; the kernel or the disk refused to follow. Say so loudly: a restart restores from disk.
            Log.RollbackIncomplete(_log, e);
        }
    }

    private void Save()
    {
        try
        {
            _stateFile.Save(new PersistedState
            {
                Objects = new(_store.Objects),
                Endpoints = new(_endpoints.Records),
                Identities = _engine.Identities.Where(i => i.Kind == IdentityKind.Pod).Select(i => new IdentityRecord(i.Id,
                    i.Labels.Canonical)).ToList(),
                Revision = _store.Revision,
                Attachments = _attachments?.Snapshot() ?? [],
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"cannot write the state file {_stateFile.FilePath}: {e.Message}; the change was undone",
                e);
        }
    }
}
