using Etcdserverpb;

namespace Membrane.Kvstore;

/// <summary>Another node changed an object this change touches since this node last saw it.</summary>
public sealed class StoreConflictException(IReadOnlyList<string> keys)
    : Exception($"changed on another node meanwhile: {string.Join(", ", keys)}; nothing was applied, retry against the current state")
{
    public IReadOnlyList<string> Keys { get; } = keys;
}

/// <summary>
/// The cluster's desired state (Namespaces, Pods, policies as YAML, keyed by <c>Kind/namespace/name</c>) under
/// <c>membrane/objects/</c>, not leased: the role the API server plays in a Kubernetes cluster. A change is one
/// transaction — all its objects or none, never half-applied — guarded by the revision at which this node last saw
/// each object it touches, so two nodes editing the same object cannot silently overwrite each other.
/// </summary>
public sealed class ClusterObjects(EtcdConnection etcd)
{
    public const string Prefix = "membrane/objects/";

    /// <summary>Every object, with the revision each was last changed at, and the store revision of the read.</summary>
    public async Task<(Dictionary<string, (string Yaml, long Revision)> Objects, long Revision)> LoadAsync(
        CancellationToken cancel = default)
    {
        var (items, revision) = await etcd.ListAsync(Prefix, cancel).ConfigureAwait(false);
        return (items.ToDictionary(kv => kv.Key.ToStringUtf8()[Prefix.Length..], kv => (kv.Value.ToStringUtf8(), kv.ModRevision),
            StringComparer.Ordinal), revision);
    }

    /// <summary>
    /// Writes (YAML) or deletes (null) objects in one transaction. <paramref name="seen"/> gives, for each key, the
    /// revision it had when this node read it (0: it did not exist); any difference is a conflict and nothing is
    /// written. Returns the store revision of the change.
    /// </summary>
    public async Task<long> CommitAsync(IReadOnlyDictionary<string, string?> changes, IReadOnlyDictionary<string, long> seen,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(changes);
        ArgumentNullException.ThrowIfNull(seen);
        var txn = new TxnRequest();
        foreach (var (key, yaml) in changes)
        {
            var stored = EtcdConnection.Bytes(Prefix + key);
            txn.Compare.Add(new Compare
            {
                Key = stored,
                Target = Compare.Types.CompareTarget.Mod,
                Result = Compare.Types.CompareResult.Equal,
                ModRevision = seen.GetValueOrDefault(key),
            });
            txn.Success.Add(yaml is null
                ? new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = stored } }
                : new RequestOp { RequestPut = new PutRequest { Key = stored, Value = EtcdConnection.Bytes(yaml) } });
        }
        // On a conflict, read back which keys moved so the error names them.
        foreach (var key in changes.Keys)
        {
            txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = EtcdConnection.Bytes(Prefix + key) } });
        }
        var response = await etcd.CallAsync(deadline => etcd.Client.TransactionAsync(txn, deadline: deadline, cancellationToken: cancel),
            cancel).ConfigureAwait(false);
        if (response.Succeeded)
        {
            return response.Header.Revision;
        }
        var moved = changes.Keys.Zip(response.Responses)
            .Where(p => (p.Second.ResponseRange.Kvs.FirstOrDefault()?.ModRevision ?? 0) != seen.GetValueOrDefault(p.First))
            .Select(p => p.First).ToList();
        throw new StoreConflictException(moved);
    }
}
