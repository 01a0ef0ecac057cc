using System.Diagnostics;
using System.Globalization;
using Membrane.Api;

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

    /// <summary>
    /// Whether the process runs (a zombie does not). One read: a process that exits between a check for its /proc entry
    /// and the read is gone, not an error (that race once failed `cluster up` with "could not find file" instead of the
    /// member's exit). The state follows the command's closing parenthesis: the command may hold spaces.
    /// </summary>
    internal static bool Alive(int pid)
    {
        if (pid <= 0)
        {
            return false;
        }
        string stat;
        try
        {
            stat = File.ReadAllText($"/proc/{pid}/stat");
        }
        catch (Exception e) when (e is FileNotFoundException or DirectoryNotFoundException or IOException)
        {
            return false;
        }
        var state = stat.LastIndexOf(')') is var end and >= 0 && end + 2 < stat.Length ? stat[end + 2] : 'X';
        return state is not ('Z' or 'X');
    }

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

    /// <summary>Free loopback ports for etcd (see <see cref="LoopbackPorts"/>), or an error that says why there are none.</summary>
    internal static int[] ReservePorts(int count)
    {
        try
        {
            return LoopbackPorts.Reserve(count);
        }
        catch (InvalidOperationException e)
        {
            throw new CliException(e.Message);
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
}
