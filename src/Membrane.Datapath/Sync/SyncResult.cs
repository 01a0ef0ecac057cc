namespace Membrane.Datapath.Sync;

/// <summary>Counts of one synchronisation.</summary>
public readonly record struct SyncResult(int Added, int Updated, int Removed, int Unchanged)
{
    public int Changes => Added + Updated + Removed;
}
