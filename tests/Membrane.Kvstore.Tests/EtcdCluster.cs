using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using Membrane.Api;

namespace Membrane.Kvstore.Tests;

/// <summary>
/// A real etcd cluster of three members on loopback ports, with data directories of its own; members can be
/// stopped (kill -9) and started again. A cluster whose member exits while it forms (a port taken meanwhile) is
/// formed again on other ports; a failure names each member's last output lines. Everything is removed at the end.
/// </summary>
public sealed class EtcdCluster : IDisposable
{
    private const int OutputLinesKept = 15;
    private const int FormingAttempts = 3;
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"mbetcd-{Guid.NewGuid():N}"[..18]);
    private readonly Process?[] _members;
    private readonly ConcurrentQueue<string>[] _output;
    private readonly (int Client, int Peer)[] _ports = [];

    public EtcdCluster(int members = 3)
    {
        _members = new Process?[members];
        _output = [.. Enumerable.Range(0, members).Select(_ => new ConcurrentQueue<string>())];
        for (var attempt = 1; ; attempt++)
        {
            var ports = LoopbackPorts.Reserve(2 * members);
            _ports = [.. Enumerable.Range(0, members).Select(i => (ports[2 * i], ports[(2 * i) + 1]))];
            try
            {
                StartAll();
                return;
            }
            catch (MemberExitedException) when (attempt < FormingAttempts)
            {
                RemoveMembersAndData();
            }
            catch
            {
                RemoveMembersAndData();
                throw;
            }
        }
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
        var output = _output[member];
        output.Clear();
        var process = new Process { StartInfo = start };
        DataReceivedEventHandler keep = (_, e) =>
        {
            if (e.Data is { } line)
            {
                output.Enqueue(line);
                while (output.Count > OutputLinesKept && output.TryDequeue(out var _))
                {
                }
            }
        };
        process.OutputDataReceived += keep;
        process.ErrorDataReceived += keep;
        process.Start();
        process.BeginErrorReadLine();
        process.BeginOutputReadLine();
        _members[member] = process;
    }

    /// <summary>kill -9 of one member.</summary>
    public void Kill(int member)
    {
        if (_members[member] is { } process)
        {
            if (!process.HasExited)
            {
                process.Kill();
                process.WaitForExit();
            }
            process.Dispose();
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

    /// <summary>
    /// Polls until a write succeeds (a leader is elected), with a 30 s deadline; a started member that exits
    /// meanwhile ends the wait at once. Either failure names every member's last output lines.
    /// </summary>
    public void WaitHealthy()
    {
        using var etcd = Connect(TimeSpan.FromSeconds(1));
        var watch = Stopwatch.StartNew();
        while (true)
        {
            if (Array.FindIndex(_members, m => m is { HasExited: true }) is var exited and >= 0)
            {
                throw new MemberExitedException($"etcd member m{exited} exited (code {_members[exited]!.ExitCode}). {Outputs()}");
            }
            try
            {
                etcd.Client.Put("membrane-test/health", watch.ElapsedTicks.ToString(CultureInfo.InvariantCulture), deadline: etcd.Deadline);
                return;
            }
            catch (Grpc.Core.RpcException e)
            {
                if (watch.Elapsed > TimeSpan.FromSeconds(30))
                {
                    throw new TimeoutException($"etcd ({Urls}) took no write within 30 s: {e.Status.Detail}. {Outputs()}", e);
                }
                Thread.Sleep(50);
            }
        }
    }

    private string Outputs() => string.Join(" ", _output.Select((lines, i) =>
        $"m{i} (client {_ports[i].Client}, peer {_ports[i].Peer}{(_members[i] is null ? ", stopped" : "")}):\n  " +
        string.Join("\n  ", lines) + "\n"));

    public void Dispose() => RemoveMembersAndData();

    private void RemoveMembersAndData()
    {
        KillAll();
        if (Directory.Exists(_root))
        {
            Directory.Delete(_root, recursive: true);
        }
    }

    private sealed class MemberExitedException(string message) : Exception(message);
}
