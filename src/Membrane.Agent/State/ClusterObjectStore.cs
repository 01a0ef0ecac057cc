using Grpc.Core;
using Membrane.Kvstore;

namespace Membrane.Agent.State;

/// <summary>
/// The desired state in cluster mode: etcd (<see cref="ClusterObjects"/>) is the source of truth, shared by every
/// agent. This node's view is what its watch has delivered plus what it committed itself; a commit is one guarded
/// transaction (a change made meanwhile on another node to an object it touches is refused, naming the object), and
/// when the store cannot be reached nothing is changed and the caller is told so. Not thread-safe: the agent's
/// lock serialises it (the watch feeds it through the agent).
/// </summary>
public sealed class ClusterObjectStore(ClusterObjects store) : IObjectStore
{
    private Dictionary<string, string> _objects = new(StringComparer.Ordinal);
    private readonly Dictionary<string, string?> _staged = new(StringComparer.Ordinal);
    private readonly Dictionary<string, long> _seen = new(StringComparer.Ordinal);

    public long Revision { get; private set; }

    public IReadOnlyDictionary<string, string> Objects => _objects;

    public string Put(string key, string yaml)
    {
        var action = !_objects.TryGetValue(key, out var old) ? "created" : old == yaml ? "unchanged" : "configured";
        _objects[key] = yaml;
        _staged[key] = yaml;
        return action;
    }

    public bool Remove(string key)
    {
        if (!_objects.Remove(key))
        {
            return false;
        }
        _staged[key] = null;
        return true;
    }

    public void Clear()
    {
        foreach (var key in _objects.Keys)
        {
            _staged[key] = null;
        }
        _objects.Clear();
    }

    public long Commit()
    {
        if (_staged.Count == 0)
        {
            return Revision;
        }
        try
        {
            Dictionary<string, long> seen;
            lock (_seen)
            {
                seen = new Dictionary<string, long>(_seen, StringComparer.Ordinal);
            }
            var revision = store.CommitAsync(_staged, seen).GetAwaiter().GetResult();
            foreach (var key in _staged.Keys)
            {
                Observe(key, _staged[key] is null ? 0 : revision);
            }
            Revision = revision;
            return revision;
        }
        catch (StoreConflictException e)
        {
            throw new AgentInputException(e.Message);
        }
        catch (RpcException e) when (e.Status.StatusCode == StatusCode.DeadlineExceeded)
        {
            // etcd may still commit a write it could not confirm once its quorum is back (all of it: one transaction).
            throw new InvalidOperationException("the cluster store did not confirm the change in time (it has no quorum or does not " +
                "answer): nothing changed on this node; the store may still apply the whole change when it recovers, every node would " +
                "then enforce it ('membrane status' says when the store is back, 'membrane policy get' shows what it holds)");
        }
        catch (RpcException e)
        {
            throw new InvalidOperationException($"the cluster store is not reachable ({e.Status.StatusCode}: {e.Status.Detail}); nothing " +
                "was changed, try again when it is back");
        }
        finally
        {
            _staged.Clear();
        }
    }

    /// <summary>What the watch delivered: the revision at which each object was last changed (for the guard).</summary>
    public void Observe(string key, long modRevision)
    {
        lock (_seen) // the watch calls this outside the agent's lock
        {
            if (modRevision == 0)
            {
                _seen.Remove(key);
            }
            else
            {
                _seen[key] = modRevision;
            }
        }
    }

    public ObjectStoreSnapshot Snapshot() => new(new Dictionary<string, string>(_objects, StringComparer.Ordinal), Revision);

    /// <summary>Sets this node's view (undoing a change, or taking what the watch delivered); writes nothing to the store.</summary>
    public void Restore(ObjectStoreSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        _objects = new Dictionary<string, string>(snapshot.Objects, StringComparer.Ordinal);
        _staged.Clear();
        Revision = snapshot.Revision;
    }
}
