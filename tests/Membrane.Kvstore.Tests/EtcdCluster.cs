using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Membrane.Kvstore.Tests;

/// <summary>
/// A real etcd cluster of three members on loopback ports, with data directories of its own; members can be
/// stopped (kill -9) and started again. Everything is removed at the end.
/// </summary>
public sealed class EtcdCluster : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"mbetcd-{Guid.NewGuid():N}"[..18]);
    private readonly (int Client, int Peer)[] _ports;
    private readonly Process?[] _members;

    public EtcdCluster(int members = 3)
    {
        _ports = Enumerable.Range(0, members).Select(_ => (FreePort(), FreePort())).ToArray();
        _members = new Process?[members];
        for (var i = 0; i < members; i++)
        {
            Start(i);
        }
        WaitHealthy();
    }

    public int Count => _members.Length;

    public string Urls => string.Join(",", _ports.Select(p => $"http://127.0.0.1:{p.Client}"));

    public EtcdConnection Connect(TimeSpan? timeout = null) => EtcdConnection.FromOption(Urls, timeout ?? TimeSpan.FromSeconds(3));

    private string InitialCluster => string.Join(",", _ports.Select((p, i) => $"m{i}=http://127.0.0.1:{p.Peer}"));

    public void Start(int member)
    {
        var (client, peer) = _ports[member];
        var start = new ProcessStartInfo("etcd") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        var dataDir = Path.Combine(_root, $"m{member}");
        foreach (var a in new[]
                 {
                     "--name", $"m{member}", "--data-dir", dataDir,
                     "--listen-client-urls", $"http://127.0.0.1:{client}", "--advertise-client-urls", $"http://127.0.0.1:{client}",
                     "--listen-peer-urls", $"http://127.0.0.1:{peer}", "--initial-advertise-peer-urls", $"http://127.0.0.1:{peer}",
                     "--initial-cluster", InitialCluster, "--initial-cluster-state", "new", "--initial-cluster-token", _root,
                     "--heartbeat-interval", "100", "--election-timeout", "1000",
                 })
        {
            start.ArgumentList.Add(a);
        }
        var process = Process.Start(start)!;
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        _members[member] = process;
    }

    /// <summary>kill -9 of one member.</summary>
    public void Kill(int member)
    {
        if (_members[member] is { HasExited: false } process)
        {
            process.Kill();
            process.WaitForExit();
        }
        _members[member] = null;
    }

    public void KillAll()
    {
        for (var i = 0; i < _members.Length; i++)
        {
            Kill(i);
        }
    }

    public void StartAll()
    {
        for (var i = 0; i < _members.Length; i++)
        {
            if (_members[i] is null)
            {
                Start(i);
            }
        }
        WaitHealthy();
    }

    /// <summary>Polls until a write succeeds (a leader is elected), with a 30 s deadline.</summary>
    public void WaitHealthy()
    {
        using var etcd = Connect(TimeSpan.FromSeconds(1));
        var watch = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                etcd.Client.Put("membrane-test/health", watch.ElapsedTicks.ToString(CultureInfo.InvariantCulture), deadline: etcd.Deadline);
                return;
            }
            catch (Grpc.Core.RpcException) when (watch.Elapsed < TimeSpan.FromSeconds(30))
            {
                Thread.Sleep(50);
            }
        }
    }

    private static int FreePort()
    {
        using var listener = new TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    public void Dispose()
    {
        KillAll();
        if (Directory.Exists(_root))
        {
            Directory.Delete(_root, recursive: true);
        }
    }
}
