using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Membrane.Cli.Commands;

/// <summary>The processes a local cluster runs: started detached with their logs, watched, stopped; free loopback ports.</summary>
internal static class LocalProcesses
{
    /// <summary>Starts a process in its own session, detached from this one, its output appended to <paramref name="log"/>.</summary>
    internal static int Spawn(string file, IReadOnlyList<string> args, string log)
    {
        var result = Run("sh", ["-c", "log=$1; shift; setsid \"$@\" >>\"$log\" 2>&1 </dev/null & echo $!", "sh", log, file, .. args]);
        if (result.Code != 0 || !int.TryParse(result.Output.Trim(), NumberStyles.None, CultureInfo.InvariantCulture, out var pid))
        {
            throw new CliException($"cannot start {file}: {result.Error.Trim()}");
        }
        return pid;
    }

    internal static (int Code, string Output, string Error) Run(string file, IReadOnlyList<string> args)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        try
        {
            using var process = Process.Start(start)!;
            var stdout = process.StandardOutput.ReadToEndAsync();
            var stderr = process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, stdout.Result, stderr);
        }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new CliException($"cannot run {file}: {e.Message} (run scripts/setup.sh to install what the cluster needs)");
        }
    }

    internal static bool Alive(int pid) => pid > 0 && File.Exists($"/proc/{pid}/stat")
        && !File.ReadAllText($"/proc/{pid}/stat").Split(' ')[2].Equals("Z", StringComparison.Ordinal);

    internal static void Terminate(int pid)
    {
        if (!Alive(pid))
        {
            return;
        }
        try
        {
            using var process = Process.GetProcessById(pid);
            Run("kill", ["-TERM", $"{pid}"]);
            if (!Poll(() => !Alive(pid), TimeSpan.FromSeconds(10)))
            {
                process.Kill();
                Poll(() => !Alive(pid), TimeSpan.FromSeconds(5));
            }
        }
        catch (ArgumentException)
        {
            // gone meanwhile
        }
    }

    internal static bool Poll(Func<bool> condition, TimeSpan deadline)
    {
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < deadline)
        {
            if (condition())
            {
                return true;
            }
            Thread.Sleep(100);
        }
        return condition();
    }

    /// <summary>
    /// Distinct free loopback ports for servers started as other processes. They are chosen below the kernel's
    /// ephemeral range: a port from that range can be taken, as an outgoing connection's source port, before the
    /// server binds it. Each is held until all are chosen.
    /// </summary>
    internal static int[] FreePorts(int count)
    {
        const int lowest = 10_000;
        var range = File.Exists(EphemeralRangeFile) ? File.ReadAllText(EphemeralRangeFile).Split('\t', ' ')[0] : "";
        var below = int.TryParse(range, NumberStyles.None, CultureInfo.InvariantCulture, out var low) && low > lowest + 1_000
            ? low
            : 32_768;
        var held = new List<TcpListener>();
        try
        {
            for (var attempt = 0; held.Count < count; attempt++)
            {
                if (attempt > 10_000)
                {
                    throw new CliException($"no {count} free loopback ports between {lowest} and {below - 1}");
                }
                var listener = new TcpListener(IPAddress.Loopback, Random.Shared.Next(lowest, below));
                try
                {
                    listener.Start();
                    held.Add(listener);
                }
                catch (SocketException)
                {
                    listener.Dispose();
                }
            }
            return [.. held.Select(l => ((IPEndPoint)l.LocalEndpoint).Port)];
        }
        finally
        {
            held.ForEach(l => l.Dispose());
        }
    }

    private const string EphemeralRangeFile = "/proc/sys/net/ipv4/ip_local_port_range";
}
