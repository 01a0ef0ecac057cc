using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Datapath.Ebpf;
using Membrane.Policy.Identity;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Changes;

/// <summary>
/// The one path of every change, from every source (<see cref="ChangeSource"/>): it owns the agent's lock and runs
/// validate → plan (capacity) → commit → persist → enforce → publish, putting memory, endpoints, kernel and disk back
/// as they were when any step fails. Reads take the same lock, so they never see a change half-made.
/// </summary>
public sealed class ChangeCoordinator(DesiredState state, IEnforcer enforcer, IStateFile stateFile, string? clusterNode, ILogger log)
    : IDisposable
{
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly List<IChangeObserver> _observers = [];

    public DesiredState State => state;

    public IEnforcer Enforcer => enforcer;

    /// <summary>Adds an observer told after every change (before any change runs).</summary>
    public void Observe(IChangeObserver observer) => _observers.Add(observer);

    /// <summary>
    /// Runs one change under the lock. <paramref name="change"/> validates and changes the desired state in memory
    /// only (engine, object store, peers), or returns null when there is nothing to do; then the maps are planned
    /// (their capacity checked before anything is written), the state is committed and persisted (API and CNI
    /// changes; a store state is adopted and persisted; other nodes' addresses are not persisted), and only then the
    /// endpoints and the kernel follow. Any failure puts memory, endpoints, kernel and disk back as they were: nothing
    /// is enforced that is not remembered, nothing remembered that was refused. Cancellation is honoured until the
    /// change is persisted; after that it runs to the end. Every change is logged once with its revision.
    /// </summary>
    public async Task<ApplyResponse> ChangeAsync(ChangeSource source, Func<List<ObjectChange>?> change, CancellationToken cancel)
    {
        ArgumentNullException.ThrowIfNull(change);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            return Run(source, change, cancel);
        }
        finally
        {
            _gate.Release();
        }
    }

    private ApplyResponse Run(ChangeSource source, Func<List<ObjectChange>?> change, CancellationToken cancel)
    {
        var before = state.Capture();
        var endpointsBefore = enforcer.Records.Keys.ToHashSet(StringComparer.Ordinal);
        var persisted = false;
        long? committed = null;
        List<ObjectChange> made = [];
        var commits = source is ChangeSource.Api or ChangeSource.Cni;
        var persists = commits || source is ChangeSource.Store;
        try
        {
            if (change() is not { } changes)
            {
                return new ApplyResponse(state.Store.Revision, [], clusterNode);
            }
            made = changes;
            var plan = enforcer.Plan(state);
            cancel.ThrowIfCancellationRequested();
            var revision = commits ? state.Store.Commit() : state.Store.Revision;
            committed = commits ? revision : null;
            if (persists)
            {
                Save();
                persisted = true;
            }
            if (enforcer.Enforce(state, plan, attachAll: false) && persists)
            {
                Save(); // the records of endpoints just created
            }
            AfterChange();
#pragma warning disable CA1873 // one line per change, the point of the log; its cost is the change's, not the packets'
            Log.Changed(log, source.ToString(), revision, Describe(changes), Touched(endpointsBefore));
#pragma warning restore CA1873
            return new ApplyResponse(revision, changes, clusterNode);
        }
        catch (Exception e)
        {
            Rollback(before, persisted);
            AfterChange();
            Log.ChangeRefused(log, source.ToString(), state.Store.Revision, e.Message);
            if (committed is { } revision && clusterNode is not null)
            {
                // The cluster's store has the change: it is the cluster's now, and reported as made. This node keeps
                // its last good state, says so to the cluster (apply's wait names it), and the watch retries it.
                foreach (var observer in _observers)
                {
                    observer.NotEnforced(revision, e.Message);
                }
                return new ApplyResponse(revision, made, clusterNode);
            }
            throw;
        }
    }

    /// <summary>At start, under the lock: everything enforced (programs attached everywhere), persisted and published.</summary>
    public async Task StartAsync(CancellationToken cancel = default)
    {
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            enforcer.Enforce(state, enforcer.Plan(state), attachAll: true);
            Save();
            AfterChange();
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <summary>
    /// Runs <paramref name="work"/> alone: a read sees no change half-made; a setting that is no object change
    /// (endpoint configuration) is made here, and persisted with <see cref="Save"/>.
    /// </summary>
    public async Task<T> ExclusiveAsync<T>(Func<T> work, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(work);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            return work();
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
        var now = enforcer.Records.Keys.ToHashSet(StringComparer.Ordinal);
        var created = now.Where(k => !before.Contains(k)).Order(StringComparer.Ordinal).ToList();
        var removed = before.Where(k => !now.Contains(k)).Order(StringComparer.Ordinal).ToList();
        return created.Count + removed.Count == 0 ? "none created or removed"
            : string.Join("; ", new[] { created.Count > 0 ? $"created {string.Join(", ", created)}" : null,
                removed.Count > 0 ? $"removed {string.Join(", ", removed)}" : null }.Where(x => x is not null));
    }

    private void AfterChange()
    {
        foreach (var observer in _observers)
        {
            observer.Changed();
        }
    }

    private void Rollback(DesiredSnapshot before, bool persisted)
    {
        try
        {
            state.Restore(before);
            enforcer.Enforce(state, enforcer.Plan(state), attachAll: false);
            if (persisted)
            {
                Save();
            }
        }
        catch (Exception e) when (e is InvalidOperationException or IOException or UnauthorizedAccessException or BpfException
                                   or AgentInputException)
        {
            // Memory is back; the kernel or the disk refused to follow. Say so loudly: a restart restores from disk.
            Log.RollbackIncomplete(log, e);
        }
    }

    /// <summary>Writes the state file: objects, endpoint records, identity numbers, attachments.</summary>
    public void Save()
    {
        try
        {
            stateFile.Save(new PersistedState
            {
                Objects = new(state.Store.Objects),
                Endpoints = new(enforcer.Records),
                Identities = state.Engine.Identities.Where(i => i.Kind == IdentityKind.Pod).Select(i => new IdentityRecord(i.Id,
                    i.Labels.Canonical)).ToList(),
                Revision = state.Store.Revision,
                Attachments = state.Attachments?.Snapshot() ?? [],
            });
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
            throw new InvalidOperationException($"cannot write the state file {stateFile.FilePath}: {e.Message}; the change was undone",
                e);
        }
    }

    public void Dispose() => _gate.Dispose();
}
