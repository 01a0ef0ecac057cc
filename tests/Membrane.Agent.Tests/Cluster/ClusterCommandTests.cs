using System.Diagnostics;
using System.Text.Json;
using Membrane.Agent.Sandbox;

namespace Membrane.Agent.Tests.Cluster;

/// <summary>
/// <c>membrane cluster up --nodes 3</c> as an operator runs it: a policy imported on node 1 is enforced on node 3's
/// traffic, every node gives the same node list and pod list, <c>--node</c> reaches each node, and <c>cluster down</c>
/// leaves no process, namespace, pin or file behind.
/// </summary>
[Collection(ClusterGroup.Name)]
public sealed class ClusterCommandTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"mbclu-cmd-{Guid.NewGuid():N}"[..20]);
    private readonly string _pods = Path.Combine(Path.GetTempPath(), $"mbclu-cmd-{Guid.NewGuid():N}.yaml");
    private readonly string _policy = Path.Combine(Path.GetTempPath(), $"mbclu-cmd-{Guid.NewGuid():N}.yaml");

    private (int Code, string Out, string Err) Membrane(params string[] args) => MembraneWithAgent(null, args);

    private (int Code, string Out, string Err) MembraneWithAgent(string? agent, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "membrane.dll"));
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        start.Environment["MEMBRANE_CLUSTER_DIR"] = _dir;
        start.Environment.Remove("MEMBRANE_SOCKET");
        if (agent is not null)
        {
            start.Environment["MEMBRANE_AGENT"] = agent;
        }
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    /// <summary>
    /// A one-way ICMP message (timestamp request) from node 3's client to node 2's web, asked on node 1: node 2 watches
    /// web while node 3 sends. web allows TCP 80 only, so it is denied (exit 1, no error); an icmps rule allows it.
    /// </summary>
    private void OneWayMessagesAreWatchedForOnTheDestinationsNode()
    {
        string[] timestamp = ["--node", "node-1", "connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol",
            "icmp", "--icmp-type", "13", "--timeout", "600"];
        var denied = Membrane(timestamp);
        Assert.True(denied.Code == 1 && denied.Out.Contains("watched on node-2", StringComparison.Ordinal), denied.Out + denied.Err);
        var allow = Path.Combine(_dir, "timestamp.yaml");
        File.WriteAllText(allow, """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: web-timestamp, namespace: shop}
            spec:
              endpointSelector: {matchLabels: {app: web}}
              ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 13}]}]}]
            """);
        Assert.Equal(0, Membrane("--node", "node-3", "policy", "import", allow).Code); // returns when every node enforces it
        var allowed = Membrane(timestamp);
        Assert.True(allowed.Code == 0 && allowed.Out.Contains("delivered to the destination pod, watched on node-2",
            StringComparison.Ordinal), allowed.Out + allowed.Err);
        Assert.Equal(0, Membrane("--node", "node-1", "policy", "delete", "shop/web-timestamp").Code);
        Assert.Equal(1, Membrane(timestamp).Code);
    }

    private static string[] Echo => ["connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol", "icmp",
        "--icmp-type", "EchoRequest"];

    [Fact]
    public async Task ThreeNodesUpOnePolicyEverywhereDownLeavesNothing()
    {
        var up = Membrane("cluster", "up", "--nodes", "3", "--dir", _dir);
        Assert.True(up.Code == 0, up.Err + up.Out);
        Assert.NotEqual(0, Membrane("cluster", "up", "--nodes", "2", "--dir", _dir).Code); // one at a time
        await TheStoreServesOnlyTheClustersCertificates();

        File.WriteAllText(_pods, LocalCluster.Shop("node-3", "node-2"));
        File.WriteAllText(_policy, """
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: web, namespace: shop}
            spec:
              endpointSelector: {matchLabels: {app: web}}
              ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """);
        Assert.Equal(0, Membrane("--node", "node-1", "apply", "-f", _pods).Code);
        Assert.True(LocalCluster.Eventually(() => Membrane(["--node", "node-3", .. Echo]).Code == 0), "no echo from node 3 to node 2");
        Assert.Equal(0, Membrane("--node", "node-1", "policy", "import", _policy).Code);
        Assert.True(LocalCluster.Eventually(() => Membrane(["--node", "node-3", .. Echo]).Code == 1),
            "a policy imported on node 1 never reached node 2's web as seen from node 3");
        // Asked on node 1, a probe from node 3's pod is sent by node 3's agent (the CLI finds it): the same answer.
        var redirected = Membrane(["--node", "node-1", .. Echo]);
        Assert.True(redirected.Code == 1 && redirected.Out.Contains("denied", StringComparison.Ordinal), redirected.Out + redirected.Err);
        var tcp = Membrane("--node", "node-1", "connectivity", "probe", "--from", "shop/client", "--to", "shop/web", "--protocol", "tcp",
            "--port", "80");
        Assert.True(tcp.Code == 0, tcp.Out + tcp.Err);
        OneWayMessagesAreWatchedForOnTheDestinationsNode();
        // endpoint get of another node's pod shows it as the peer it is here, with its node.
        var remote = Membrane("--node", "node-1", "endpoint", "get", "shop/web");
        Assert.True(remote.Code == 0 && remote.Out.Contains("runs on node node-2", StringComparison.Ordinal), remote.Out + remote.Err);

        // Cluster-wide answers are the same on every node.
        var lists = new[] { "node-1", "node-2", "node-3" }.Select(n => Membrane("--node", n, "node", "list", "-o", "json").Out).ToList();
        Assert.All(lists, l => Assert.Equal(lists[0], l));
        using (var nodes = JsonDocument.Parse(lists[0]))
        {
            Assert.Equal(3, nodes.RootElement.GetArrayLength());
        }
        Assert.True(LocalCluster.Eventually(() =>
        {
            var pods = new[] { "node-1", "node-2", "node-3" }.Select(n => Membrane("--node", n, "endpoint", "list").Out.Split('\n')
                .Where(l => l.Contains("shop/", StringComparison.Ordinal)).Select(l => string.Join(' ', l.Split(' ',
                    StringSplitOptions.RemoveEmptyEntries).Skip(1).Take(3))).ToList()).ToList();
            return pods.All(p => p.SequenceEqual(pods[0])) && pods[0].SequenceEqual(["shop/client node-3 256", "shop/web node-2 257"]);
        }), "the nodes do not agree on the cluster's pods");
        Assert.NotEqual(0, Membrane("--node", "node-9", "status").Code);

        var status = Membrane("cluster", "status", "-o", "json");
        Assert.True(status.Code == 0, status.Out + status.Err);
        using (var json = JsonDocument.Parse(status.Out))
        {
            Assert.All(json.RootElement.GetProperty("nodes").EnumerateArray(), n => Assert.Equal("ok",
                n.GetProperty("health").GetString()));
            Assert.Equal(3, json.RootElement.GetProperty("etcd").EnumerateArray().Count(m => m.GetProperty("healthy").GetBoolean()));
        }

        // The store client's metrics on node 3 (cluster up serves node N's on 127.0.0.1:9962+N): requests, watch events and
        // watch lag (the listing and the changes since, each enforced).
        using (var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) })
        {
            var metrics = await http.GetStringAsync(new Uri("http://127.0.0.1:9965/metrics"));
            Assert.Matches(@"membrane_kvstore_events_total\{scope=""membrane/objects/"",action=""put""\} [1-9]", metrics);
            Assert.Matches(@"membrane_kvstore_operations_duration_seconds_count\{action=""put"",outcome=""success""\} [1-9]", metrics);
            Assert.Matches(@"membrane_kvstore_watch_lag_seconds_count ([2-9]|\d\d)", metrics);
        }

        var down = Membrane("cluster", "down", "--dir", _dir);
        Assert.True(down.Code == 0, down.Err + down.Out);
        Assert.False(Directory.Exists(_dir));
        Assert.DoesNotContain(Ip.Run("netns", "list").Split('\n'), l => l.StartsWith("mbc", StringComparison.Ordinal)
            || l.StartsWith("membrane-underlay", StringComparison.Ordinal));
        Assert.False(Directory.Exists("/sys/fs/bpf/membrane-cluster"));
    }

    /// <summary>
    /// etcd speaks TLS only and refuses a client without a certificate of the cluster's CA; cluster.json and the keys
    /// are root's alone.
    /// </summary>
    private async Task TheStoreServesOnlyTheClustersCertificates()
    {
        var clusterFile = Path.Combine(_dir, "cluster.json");
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(clusterFile));
        Assert.Equal(UnixFileMode.UserRead | UnixFileMode.UserWrite, File.GetUnixFileMode(Path.Combine(_dir, "pki", "node-1-key.pem")));
        using var cluster = JsonDocument.Parse(File.ReadAllText(clusterFile));
        var url = new Uri(cluster.RootElement.GetProperty("etcd")[0].GetProperty("clientUrl").GetString()!);
        Assert.Equal("https", url.Scheme);
        using var plain = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        await Assert.ThrowsAnyAsync<HttpRequestException>(() => plain.GetStringAsync(new Uri($"http://{url.Authority}/health")));
        // TLS, trusting the server blindly, but without a client certificate: the member refuses the handshake.
        using var anonymous = new HttpClient(new SocketsHttpHandler
        {
            SslOptions = new System.Net.Security.SslClientAuthenticationOptions
            {
#pragma warning disable CA5359 // the server is not what is tested here: a client without a certificate is
                RemoteCertificateValidationCallback = (_, _, _, _) => true,
#pragma warning restore CA5359
            },
        })
        { Timeout = TimeSpan.FromSeconds(5) };
        await Assert.ThrowsAnyAsync<HttpRequestException>(() => anonymous.PostAsync(new Uri($"https://{url.Authority}/v3/kv/range"),
            new StringContent("{\"key\":\"bWVtYnJhbmUv\"}")));
        await ANodesCertificateWritesOnlyThatNodesKeys(url);
    }

    /// <summary>
    /// Access control in the store: node 1's credentials (as a compromised node 1 would use them) read everything and
    /// write the shared keys and node 1's own, but cannot announce, publish addresses, report or use identities for
    /// node 2; the keys node 2 wrote stay as they were.
    /// </summary>
    private async Task ANodesCertificateWritesOnlyThatNodesKeys(Uri url)
    {
        string Pki(string file) => Path.Combine(_dir, "pki", file);
        using var node1 = Kvstore.EtcdConnection.FromOption($"https://{url.Authority}",
            tls: new Kvstore.EtcdTls(Pki("ca.pem"), Pki("node-1.pem"), Pki("node-1-key.pem")));
        var node2Announcement = (await node1.ListAsync("membrane/nodes/node-2")).Items.Single().Value.ToStringUtf8();
        foreach (var key in new[] { "membrane/nodes/node-2", "membrane/ipcache/node-2/10.102.0.200", "membrane/enforced/node-2",
            "membrane/identities/users/node-2/256", "membrane/nodes/node-1x", "membrane/ipcache/node-10/10.110.0.1", "membrane/other" })
        {
            var denied = await Assert.ThrowsAsync<Grpc.Core.RpcException>(() => node1.PutAsync(key, "10.250.0.1 10.102.0.0/16"));
            Assert.True(denied.StatusCode == Grpc.Core.StatusCode.PermissionDenied, $"{key}: {denied.Status}");
        }
        Assert.Equal(node2Announcement, (await node1.ListAsync("membrane/nodes/node-2")).Items.Single().Value.ToStringUtf8());
        foreach (var key in new[] { "membrane/ipcache/node-1/10.101.0.200", "membrane/identities/users/node-1/999999" })
        {
            await node1.PutAsync(key, "");
            await node1.Client.DeleteAsync(key);
        }
    }

    [Fact]
    public void CleanupOfOneNodeNeverRemovesAnUnderlayItHasNoPortIn()
    {
        const string other = "mbclu-other-ul";
        Ip.Run("netns", "add", other);
        try
        {
            var cleaned = Membrane("cleanup", "--name-prefix", "mbzz", "--pin-dir", "/sys/fs/bpf/mbzz", "--underlay-netns", other);
            Assert.True(cleaned.Code == 0, cleaned.Err);
            Assert.True(NetworkNamespace.Exists(other), "another cluster's underlay namespace was deleted");
        }
        finally
        {
            if (NetworkNamespace.Exists(other))
            {
                Ip.Run("netns", "delete", other);
            }
        }
    }

    [Fact]
    public void AnEtcdMemberThatExitsFailsClusterUpAtOnceWithItsLogAndLeavesNothing()
    {
        Directory.CreateDirectory(_dir);
        File.WriteAllText(Path.Combine(_dir, "etcd-2"), "a file where etcd-2's data directory goes");

        var up = Membrane("cluster", "up", "--nodes", "2", "--dir", _dir);

        Assert.Equal(2, up.Code);
        Assert.Contains("etcd member etcd-2 exited: ", up.Err, StringComparison.Ordinal);
        Assert.Contains("error listing data dir", up.Err, StringComparison.Ordinal); // etcd's own last words
        Assert.False(Directory.Exists(_dir));
        Assert.DoesNotContain(LocalProcessesNamed("etcd"), cmd => cmd.Contains(_dir, StringComparison.Ordinal));
    }

    [Fact]
    public void AClusterUpWithoutItsAgentLeavesNothingAndTheNextOneStarts()
    {
        var up = MembraneWithAgent("/nonexistent/membrane-agent", "cluster", "up", "--nodes", "1", "--dir", _dir);

        Assert.Equal(2, up.Code);
        Assert.Contains("MEMBRANE_AGENT names /nonexistent/membrane-agent", up.Err, StringComparison.Ordinal);
        Assert.Contains("removing what was started", up.Err, StringComparison.Ordinal);
        Assert.False(Directory.Exists(_dir), "cluster.json and the etcd data stayed behind");
        Assert.DoesNotContain(LocalProcessesNamed("etcd"), cmd => cmd.Contains(_dir, StringComparison.Ordinal));

        var again = Membrane("cluster", "up", "--nodes", "1", "--dir", _dir);
        Assert.True(again.Code == 0, again.Err);
        Assert.Equal(0, Membrane("cluster", "down", "--dir", _dir).Code);
        Assert.False(Directory.Exists(_dir));
    }

    private static IEnumerable<string> LocalProcessesNamed(string name) => Directory.EnumerateDirectories("/proc")
        .Select(d => Path.Combine(d, "cmdline")).Where(File.Exists).Select(f =>
        {
            try
            {
                return File.ReadAllText(f).Replace('\0', ' ');
            }
            catch (IOException)
            {
                return "";
            }
        })
        .Where(cmd => cmd.StartsWith(name, StringComparison.Ordinal));

    public void Dispose()
    {
        if (Directory.Exists(_dir))
        {
            Membrane("cluster", "down", "--dir", _dir);
        }
        File.Delete(_pods);
        File.Delete(_policy);
    }
}
