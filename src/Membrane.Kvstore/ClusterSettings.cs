using Etcdserverpb;

namespace Membrane.Kvstore;

/// <summary>
/// Settings the whole cluster shares (<c>membrane/settings/NAME</c>, not leased): the first node to start writes
/// its value (create-only), every later node reads it and must agree, so two nodes can never run the cluster two ways.
/// </summary>
public sealed class ClusterSettings(EtcdConnection etcd)
{
    public const string Prefix = "membrane/settings/";

    /// <summary>The cluster's value of the setting: <paramref name="proposed"/> when no node has set it yet.</summary>
    public async Task<string> AgreeAsync(string name, string proposed, CancellationToken cancel = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(name);
        ArgumentNullException.ThrowIfNull(proposed);
        var key = EtcdConnection.Bytes(Prefix + name);
        var txn = new TxnRequest();
        txn.Compare.Add(new Compare
        {
            Key = key,
            Target = Compare.Types.CompareTarget.Create,
            Result = Compare.Types.CompareResult.Equal,
            CreateRevision = 0,
        });
        txn.Success.Add(new RequestOp { RequestPut = new PutRequest { Key = key, Value = EtcdConnection.Bytes(proposed) } });
        txn.Failure.Add(new RequestOp { RequestRange = new RangeRequest { Key = key } });
        var result = await etcd.CallAsync(deadline => etcd.Client.TransactionAsync(txn, deadline: deadline, cancellationToken: cancel),
            cancel)
            .ConfigureAwait(false);
        return result.Succeeded ? proposed : result.Responses[0].ResponseRange.Kvs[0].Value.ToStringUtf8();
    }
}
