namespace Membrane.Agent.State;

/// <summary>The single-node object store: in memory, written to disk by the agent's <see cref="StateStore"/>.</summary>
public sealed class LocalObjectStore : IObjectStore
{
    private Dictionary<string, string> _objects = new(StringComparer.Ordinal);

    public long Revision { get; private set; }

    public IReadOnlyDictionary<string, string> Objects => _objects;

    public string Put(string key, string yaml)
    {
        var action = !_objects.TryGetValue(key, out var old) ? "created" : old == yaml ? "unchanged" : "configured";
        _objects[key] = yaml;
        return action;
    }

    public bool Remove(string key) => _objects.Remove(key);

    public void Clear() => _objects.Clear();

    public long Commit() => ++Revision;

    public ObjectStoreSnapshot Snapshot() => new(new Dictionary<string, string>(_objects, StringComparer.Ordinal), Revision);

    public void Restore(ObjectStoreSnapshot snapshot)
    {
        ArgumentNullException.ThrowIfNull(snapshot);
        _objects = new Dictionary<string, string>(snapshot.Objects, StringComparer.Ordinal);
        Revision = snapshot.Revision;
    }
}
