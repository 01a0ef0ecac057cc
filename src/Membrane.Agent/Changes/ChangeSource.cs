namespace Membrane.Agent.Changes;

/// <summary>Where a change comes from: every source takes the same path, with the same rollback.</summary>
public enum ChangeSource
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

/// <summary>Told after every change, made or undone, under the coordinator's lock.</summary>
public interface IChangeObserver
{
    /// <summary>The state changed, or a change was undone.</summary>
    void Changed();

    /// <summary>Cluster mode: the store has <paramref name="revision"/> but this node could not enforce it.</summary>
    void NotEnforced(long revision, string reason);
}
