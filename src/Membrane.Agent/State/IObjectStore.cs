namespace Membrane.Agent.State;

/// <summary>What an object store held at one moment: to undo a change that failed half-way.</summary>
public sealed record ObjectStoreSnapshot(IReadOnlyDictionary<string, string> Objects, long Revision);

/// <summary>
/// The desired state: Namespaces, Pods and policies as their YAML, keyed by <c>Kind/namespace/name</c>, and a revision
/// that counts committed changes. On one node it is local (persisted in the agent's state file); in cluster mode a
/// shared store (etcd) implements it. Changes are staged with <see cref="Put"/>/<see cref="Remove"/> and become a
/// revision with <see cref="Commit"/>. Not thread-safe: the agent's lock serialises it.
/// </summary>
public interface IObjectStore
{
    long Revision { get; }

    IReadOnlyDictionary<string, string> Objects { get; }

    /// <summary>Stages an object; returns <c>created</c>, <c>configured</c> or <c>unchanged</c>.</summary>
    string Put(string key, string yaml);

    /// <summary>Stages a removal; false when there was no such object.</summary>
    bool Remove(string key);

    void Clear();

    /// <summary>The staged changes become the next revision; returns it.</summary>
    long Commit();

    ObjectStoreSnapshot Snapshot();

    void Restore(ObjectStoreSnapshot snapshot);
}
