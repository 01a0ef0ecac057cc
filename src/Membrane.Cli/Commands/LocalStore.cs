namespace Membrane.Cli.Commands;

/// <summary>The etcd of a local cluster (<c>membrane cluster up</c>): its health, and its access control once formed.</summary>
internal static class LocalStore
{
    /// <summary>
    /// Each node's certificate becomes a store user that may write only its own per-node keys (ClusterAccess); the
    /// operator's (root) certificate may do everything.
    /// </summary>
    public static void EnableAccessControl(string directory, string urls, int count)
    {
        using var etcd = Kvstore.EtcdConnection.FromOption(urls, tls: new Kvstore.EtcdTls(LocalPki.Ca(directory),
            LocalPki.Certificate(directory, LocalPki.CliClient), LocalPki.Key(directory, LocalPki.CliClient)));
        try
        {
            Kvstore.ClusterAccess.EnableAsync(etcd, Enumerable.Range(1, count).Select(i => $"node-{i}")).GetAwaiter().GetResult();
        }
        catch (Grpc.Core.RpcException e)
        {
            throw new CliException($"cannot turn on the store's access control ({e.Status.StatusCode}): {e.Status.Detail}");
        }
    }

    public static bool Healthy(string directory, string url)
    {
        try
        {
            using var http = new HttpClient(LocalPki.CliHandler(directory)) { Timeout = TimeSpan.FromSeconds(2) };
            return http.GetStringAsync(new Uri($"{url}/health")).GetAwaiter().GetResult().Contains("\"true\"", StringComparison.Ordinal);
        }
        catch (Exception e) when (e is HttpRequestException or TaskCanceledException)
        {
            return false;
        }
    }
}
