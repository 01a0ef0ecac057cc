using Etcdserverpb;
using Google.Protobuf;

namespace Membrane.Kvstore;

/// <summary>A key or a prefix a role may read, or read and write.</summary>
public sealed record KeyAccess(string Key, bool Prefix, bool Write);

/// <summary>
/// Who may write which keys of the store (etcd's role-based access control, the client certificate's CN as the user).
/// Every node reads everything under <c>membrane/</c>; it writes the shared keys (objects, identity numbers, settings,
/// locks) and, of the per-node keys, only its own: its announcement, its ipcache entries, its enforcement report and
/// its identity uses. A node's credentials therefore cannot announce, publish addresses or report for another node.
/// <see cref="Root"/> (the operator's certificate) may do everything.
/// </summary>
public static class ClusterAccess
{
    public const string Root = "root";

    /// <summary>What <paramref name="node"/>'s user may do.</summary>
    public static IReadOnlyList<KeyAccess> Permissions(string node)
    {
        ArgumentException.ThrowIfNullOrEmpty(node);
        return
        [
            new("membrane/", Prefix: true, Write: false),
            new(ClusterObjects.Prefix, Prefix: true, Write: true),
            new(ClusterIdentities.Prefix + "id/", Prefix: true, Write: true),
            new(ClusterIdentities.Prefix + "labels/", Prefix: true, Write: true),
            new(ClusterSettings.Prefix, Prefix: true, Write: true),
            new("membrane/locks/", Prefix: true, Write: true),
            new($"{ClusterIdentities.Prefix}users/{node}/", Prefix: true, Write: true),
            new($"{ClusterIpCache.Prefix}{node}/", Prefix: true, Write: true),
            new(ClusterIpCache.NodesPrefix + node, Prefix: false, Write: true),
            new(ClusterEnforcement.Prefix + node, Prefix: false, Write: true),
        ];
    }

    /// <summary>
    /// Creates <see cref="Root"/> and one user and role per node (no passwords: the client certificate names the
    /// user), then turns access control on. Run once, on a new store, with the root user's certificate.
    /// </summary>
    public static async Task EnableAsync(EtcdConnection etcd, IEnumerable<string> nodes, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(etcd);
        ArgumentNullException.ThrowIfNull(nodes);
        var client = etcd.Client;
        await etcd.CallAsync(d => client.UserAddAsync(new AuthUserAddRequest { Name = Root, Options = new() { NoPassword = true } },
            deadline: d, cancellationToken: cancel), cancel).ConfigureAwait(false);
        await etcd.CallAsync(d => client.UserGrantRoleAsync(new AuthUserGrantRoleRequest { User = Root, Role = Root }, deadline: d,
            cancellationToken: cancel), cancel).ConfigureAwait(false);
        foreach (var node in nodes)
        {
            await etcd.CallAsync(d => client.RoleAddAsync(new AuthRoleAddRequest { Name = node }, deadline: d, cancellationToken: cancel),
                cancel).ConfigureAwait(false);
            foreach (var permission in Permissions(node))
            {
                var key = EtcdConnection.Bytes(permission.Key);
                var grant = new AuthRoleGrantPermissionRequest
                {
                    Name = node,
                    Perm = new Authpb.Permission
                    {
                        PermType = permission.Write ? Authpb.Permission.Types.Type.Readwrite : Authpb.Permission.Types.Type.Read,
                        Key = key,
                        RangeEnd = permission.Prefix ? EtcdConnection.RangeEnd(permission.Key) : ByteString.Empty,
                    },
                };
                await etcd.CallAsync(d => client.RoleGrantPermissionAsync(grant, deadline: d, cancellationToken: cancel), cancel)
                    .ConfigureAwait(false);
            }
            await etcd.CallAsync(d => client.UserAddAsync(new AuthUserAddRequest { Name = node, Options = new() { NoPassword = true } },
                deadline: d, cancellationToken: cancel), cancel).ConfigureAwait(false);
            await etcd.CallAsync(d => client.UserGrantRoleAsync(new AuthUserGrantRoleRequest { User = node, Role = node }, deadline: d,
                cancellationToken: cancel), cancel).ConfigureAwait(false);
        }
        await etcd.CallAsync(d => client.AuthEnableAsync(new AuthEnableRequest(), deadline: d, cancellationToken: cancel), cancel)
            .ConfigureAwait(false);
    }
}
