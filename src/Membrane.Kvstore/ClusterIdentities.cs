using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using Etcdserverpb;

namespace Membrane.Kvstore;

/// <summary>
/// Security identities allocated cluster-wide, laid out as the reference system's kvstore allocator:
/// <list type="bullet">
/// <item><c>membrane/identities/id/ID</c> → the canonical labels (the master key, not leased);</item>
/// <item><c>membrane/identities/labels/SHA256</c> → ID (one per label set: the key that makes two racing agents agree);</item>
/// <item><c>membrane/identities/users/NODE/ID</c> → on NODE's lease: the node uses the identity (under the node's name,
/// so the store's access control can give each node only its own).</item>
/// </list>
/// A new identity is one transaction that creates the labels key and the master key only if neither exists, so
/// agents racing for the same labels end with one number, and two label sets never share one. Reusing an identity
/// "touches" its labels key in the same transaction that writes the user key, which is what lets the garbage
/// collector (<see cref="CollectGarbageAsync"/>) never remove an identity being taken.
/// </summary>
public sealed class ClusterIdentities(EtcdConnection etcd, string node, NodeSession session)
{
    public const string Prefix = "membrane/identities/";
    public const uint First = 256;
    public const uint Last = 16_777_216; // below the CIDR identities
    private const int Attempts = 256;
    private uint _hint = First;

    public static string IdKey(uint id) => $"{Prefix}id/{id.ToString(CultureInfo.InvariantCulture)}";

    public static string LabelsKey(string labels) =>
        $"{Prefix}labels/{Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(labels)))}";

    public static string UserKey(uint id, string node) => $"{Prefix}users/{node}/{id.ToString(CultureInfo.InvariantCulture)}";

    /// <summary>
    /// The identity of <paramref name="labels"/> (canonical form), created if no node has it; this node is recorded as
    /// a user.
    /// </summary>
    public async Task<uint> AcquireAsync(string labels, CancellationToken cancel = default)
    {
        ArgumentException.ThrowIfNullOrEmpty(labels);
        var labelsKey = EtcdConnection.Bytes(LabelsKey(labels));
        for (var attempt = 0; attempt < Attempts; attempt++)
        {
            var existing = await etcd.CallAsync(deadline => etcd.Client.GetAsync(new RangeRequest { Key = labelsKey }, deadline: deadline,
                cancellationToken: cancel), cancel).ConfigureAwait(false);
            if (existing.Kvs.Count == 1)
            {
                var id = uint.Parse(existing.Kvs[0].Value.ToStringUtf8(), CultureInfo.InvariantCulture);
                var reuse = new TxnRequest();
                reuse.Compare.Add(new Compare
                {
                    Key = labelsKey,
                    Target = Compare.Types.CompareTarget.Value,
                    Result = Compare.Types.CompareResult.Equal,
                    Value = existing.Kvs[0].Value,
                });
                reuse.Success.Add(Put(labelsKey, existing.Kvs[0].Value.ToStringUtf8(), 0)); // the touch the collector checks
                reuse.Success.Add(Put(EtcdConnection.Bytes(UserKey(id, node)), "", session.Lease));
                if ((await Txn(reuse, cancel).ConfigureAwait(false)).Succeeded)
                {
                    session.Own(UserKey(id, node), "");
                    return id;
                }
                continue; // collected meanwhile: allocate anew
            }
            var candidate = await NextFreeAsync(cancel).ConfigureAwait(false);
            var create = new TxnRequest();
            create.Compare.Add(Absent(labelsKey));
            create.Compare.Add(Absent(EtcdConnection.Bytes(IdKey(candidate))));
            create.Success.Add(Put(EtcdConnection.Bytes(IdKey(candidate)), labels, 0));
            create.Success.Add(Put(labelsKey, candidate.ToString(CultureInfo.InvariantCulture), 0));
            create.Success.Add(Put(EtcdConnection.Bytes(UserKey(candidate, node)), "", session.Lease));
            if ((await Txn(create, cancel).ConfigureAwait(false)).Succeeded)
            {
                session.Own(UserKey(candidate, node), "");
                return candidate;
            }
            _hint = candidate + 1; // another agent took the number (or the labels): look again
        }
        throw new InvalidOperationException($"no identity for {labels} after {Attempts} attempts: the store is under heavy contention");
    }

    /// <summary>This node no longer uses the identity (the number stays until the collector finds no user).</summary>
    public Task ReleaseAsync(uint id, CancellationToken cancel = default) => session.DeleteAsync(UserKey(id, node), cancel);

    /// <summary>Every identity in the store: number → labels (a key that names no number is no identity).</summary>
    public async Task<Dictionary<uint, string>> ListAsync(CancellationToken cancel = default)
    {
        var (items, _) = await etcd.ListAsync(Prefix + "id/", cancel).ConfigureAwait(false);
        return items.Select(kv => (Number: NumberOf(kv.Key.ToStringUtf8()), Labels: kv.Value.ToStringUtf8()))
            .Where(x => x.Number is not null).ToDictionary(x => x.Number!.Value, x => x.Labels);
    }

    /// <summary>The number an <c>id/</c> key names, or null.</summary>
    private static uint? NumberOf(string key) =>
        key.StartsWith(Prefix + "id/", StringComparison.Ordinal)
        && uint.TryParse(key[(Prefix.Length + 3)..], NumberStyles.None, CultureInfo.InvariantCulture, out var number) ? number : null;

    /// <summary>
    /// Follows which identity numbers the store holds: an ipcache entry is believed only with one of them (a reserved
    /// number, or one nobody allocated, names no pod identity).
    /// </summary>
    public static async IAsyncEnumerable<IReadOnlySet<uint>> FollowNumbersAsync(EtcdConnection etcd,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancel = default)
    {
        var events = new PrefixWatcher(etcd, Prefix + "id/").Start(cancel);
        var numbers = new HashSet<uint>();
        while (await events.WaitToReadAsync(cancel).ConfigureAwait(false))
        {
            while (events.TryRead(out var change))
            {
                switch (change)
                {
                    case StoreSnapshot snapshot:
                        numbers = [.. snapshot.Items.Keys.Select(NumberOf).OfType<uint>()];
                        break;
                    case StorePut put when NumberOf(put.Key) is { } added:
                        numbers.Add(added);
                        break;
                    case StoreDelete delete when NumberOf(delete.Key) is { } gone:
                        numbers.Remove(gone);
                        break;
                }
            }
            yield return new HashSet<uint>(numbers);
        }
    }

    private async Task<uint> NextFreeAsync(CancellationToken cancel)
    {
        var used = (await ListAsync(cancel).ConfigureAwait(false)).Keys.ToHashSet();
        for (var id = Math.Max(_hint, First); id <= Last; id++)
        {
            if (!used.Contains(id))
            {
                _hint = id;
                return id;
            }
        }
        for (var id = First; id < _hint; id++)
        {
            if (!used.Contains(id))
            {
                _hint = id;
                return id;
            }
        }
        throw new InvalidOperationException("every cluster identity number is in use");
    }

    /// <summary>
    /// One round of garbage collection, run by one agent at a time (a leased lock key). Identities no node uses are
    /// marked with their labels key's revision; those marked in the previous round and still unused and untouched
    /// are deleted in a transaction that checks the revision again, so an identity taken between the rounds (or
    /// during the delete) is never collected. Returns the numbers deleted; <paramref name="marks"/> carries the marks
    /// from one round to the next.
    /// </summary>
    public async Task<IReadOnlyList<uint>> CollectGarbageAsync(Dictionary<uint, long> marks, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(marks);
        var lockKey = EtcdConnection.Bytes("membrane/locks/identity-gc");
        var take = new TxnRequest();
        take.Compare.Add(Absent(lockKey));
        take.Success.Add(Put(lockKey, node, session.Lease));
        if (!(await Txn(take, cancel).ConfigureAwait(false)).Succeeded)
        {
            return []; // another agent collects
        }
        try
        {
            var identities = await ListAsync(cancel).ConfigureAwait(false);
            var (users, _) = await etcd.ListAsync(Prefix + "users/", cancel).ConfigureAwait(false);
            // users/NODE/ID; a key of another shape names no identity in use (it cannot keep one from collection either).
            var used = users
                .Select(u => uint.TryParse(u.Key.ToStringUtf8().Split('/')[^1], NumberStyles.None, CultureInfo.InvariantCulture, out var id)
                    ? id : 0)
                .Where(id => id != 0).ToHashSet();
            var deleted = new List<uint>();
            var next = new Dictionary<uint, long>();
            foreach (var (id, labels) in identities.Where(i => !used.Contains(i.Key)))
            {
                var labelsKey = EtcdConnection.Bytes(LabelsKey(labels));
                var read = new RangeRequest { Key = labelsKey };
                var current = await etcd.CallAsync(deadline => etcd.Client.GetAsync(read, deadline: deadline, cancellationToken: cancel),
                    cancel).ConfigureAwait(false);
                var revision = current.Kvs.Count == 1 ? current.Kvs[0].ModRevision : 0;
                if (marks.TryGetValue(id, out var marked) && marked == revision)
                {
                    var sweep = new TxnRequest();
                    sweep.Compare.Add(new Compare
                    {
                        Key = labelsKey,
                        Target = Compare.Types.CompareTarget.Mod,
                        Result = Compare.Types.CompareResult.Equal,
                        ModRevision = revision,
                    });
                    sweep.Success.Add(new RequestOp { RequestDeleteRange = new DeleteRangeRequest { Key = labelsKey } });
                    sweep.Success.Add(new RequestOp
                    {
                        RequestDeleteRange = new DeleteRangeRequest { Key = EtcdConnection.Bytes(IdKey(id)) },
                    });
                    if ((await Txn(sweep, cancel).ConfigureAwait(false)).Succeeded)
                    {
                        deleted.Add(id);
                        continue;
                    }
                }
                next[id] = revision;
            }
            marks.Clear();
            foreach (var (id, revision) in next)
            {
                marks[id] = revision;
            }
            return deleted;
        }
        finally
        {
            await etcd.CallAsync(deadline => etcd.Client.DeleteAsync(new DeleteRangeRequest { Key = lockKey }, deadline: deadline,
                cancellationToken: cancel), cancel).ConfigureAwait(false);
        }
    }

    private Task<TxnResponse> Txn(TxnRequest request, CancellationToken cancel) =>
        etcd.CallAsync(deadline => etcd.Client.TransactionAsync(request, deadline: deadline, cancellationToken: cancel), cancel);

    private static Compare Absent(Google.Protobuf.ByteString key) => new()
    {
        Key = key,
        Target = Compare.Types.CompareTarget.Create,
        Result = Compare.Types.CompareResult.Equal,
        CreateRevision = 0,
    };

    private static RequestOp Put(Google.Protobuf.ByteString key, string value, long lease) =>
        new() { RequestPut = new PutRequest { Key = key, Value = EtcdConnection.Bytes(value), Lease = lease } };
}
