namespace Membrane.Kvstore.Tests;

/// <summary>The cluster's desired state on a real three-member etcd: atomic changes, conflicts named, never half-applied.</summary>
public sealed class ClusterObjectsTests : IDisposable
{
    private readonly EtcdCluster _etcd = new();

    [Fact]
    public async Task TwoNodesEditingTheSameObjectFromTheSameRevisionOneWinsTheOtherIsToldWhy()
    {
        using var e1 = _etcd.Connect();
        using var e2 = _etcd.Connect();
        var (n1, n2) = (new ClusterObjects(e1), new ClusterObjects(e2));
        await n1.CommitAsync(new Dictionary<string, string?> { ["CiliumNetworkPolicy/a/p"] = "v1" }, new Dictionary<string, long>());
        var (seen, _) = await n1.LoadAsync();
        var revision = new Dictionary<string, long> { ["CiliumNetworkPolicy/a/p"] = seen["CiliumNetworkPolicy/a/p"].Revision };

        await n1.CommitAsync(new Dictionary<string, string?> { ["CiliumNetworkPolicy/a/p"] = "from n1" }, revision);
        var conflict = await Assert.ThrowsAsync<StoreConflictException>(() => n2.CommitAsync(
            new Dictionary<string, string?> { ["CiliumNetworkPolicy/a/p"] = "from n2", ["Pod/a/x"] = "pod" }, revision));
        Assert.Equal(["CiliumNetworkPolicy/a/p"], conflict.Keys);
        var (now, _) = await n2.LoadAsync();
        Assert.Equal("from n1", now["CiliumNetworkPolicy/a/p"].Yaml);
        Assert.False(now.ContainsKey("Pod/a/x")); // nothing of the refused change was applied
        // Creating what another node created meanwhile is a conflict too.
        await Assert.ThrowsAsync<StoreConflictException>(() => n2.CommitAsync(
            new Dictionary<string, string?> { ["CiliumNetworkPolicy/a/p"] = "new" }, new Dictionary<string, long>()));
    }

    [Fact]
    public async Task AChangeCaughtInAQuorumLossIsAllOrNothing()
    {
        using var etcd = _etcd.Connect(TimeSpan.FromSeconds(1));
        var objects = new ClusterObjects(etcd);
        var change = Enumerable.Range(0, 5).ToDictionary(i => $"Pod/a/p{i}", i => (string?)$"pod {i}");
        _etcd.Kill(1);
        _etcd.Kill(2);
        await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => objects.CommitAsync(change, new Dictionary<string, long>()));
        _etcd.StartAll();
        var (after, _) = await objects.LoadAsync();
        // etcd may commit a timed-out write after recovery: then all of it, never part.
        Assert.Contains(after.Count, new[] { 0, 5 });
    }

    public void Dispose() => _etcd.Dispose();
}
