using Membrane.Agent.State;

namespace Membrane.Agent.Tests.State;

/// <summary>The single-node object store: change classification, revisions, and undo by snapshot.</summary>
public sealed class LocalObjectStoreTests
{
    [Fact]
    public void PutSaysWhetherAnObjectIsNewChangedOrTheSame()
    {
        var store = new LocalObjectStore();
        Assert.Equal("created", store.Put("Namespace/a", "x"));
        Assert.Equal("unchanged", store.Put("Namespace/a", "x"));
        Assert.Equal("configured", store.Put("Namespace/a", "y"));
        Assert.True(store.Remove("Namespace/a"));
        Assert.False(store.Remove("Namespace/a"));
    }

    [Fact]
    public void ARevisionCountsCommitsAndASnapshotUndoesEverythingStagedSince()
    {
        var store = new LocalObjectStore();
        store.Put("Namespace/a", "x");
        Assert.Equal(1, store.Commit());
        var before = store.Snapshot();
        store.Put("Namespace/b", "y");
        store.Remove("Namespace/a");
        Assert.Equal(2, store.Commit());
        store.Restore(before);
        Assert.Equal(1, store.Revision);
        Assert.Equal(["Namespace/a"], store.Objects.Keys);
        store.Clear();
        Assert.Empty(store.Objects);
        Assert.Equal("x", before.Objects["Namespace/a"]); // a snapshot is a copy, not a view
    }
}
