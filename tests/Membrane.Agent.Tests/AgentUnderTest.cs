using System.Diagnostics;
using System.Text;

namespace Membrane.Agent.Tests;

/// <summary>A real agent process started as an operator starts it (<c>membrane agent …</c>), with its error output kept.</summary>
public static class AgentUnderTest
{
    /// <summary>Runs the CLI against the agent on <paramref name="socket"/>: exit code, output and errors.</summary>
    public static (int Code, string Out, string Err) Cli(string socket, params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "membrane.dll"));
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        start.Environment["MEMBRANE_SOCKET"] = socket;
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    /// <summary><c>membrane cleanup</c> of an agent's prefix, pins (/sys/fs/bpf/PREFIX) and state, as after a test.</summary>
    public static void Cleanup(string prefix, string state, params string[] extra)
    {
        Cli("/nonexistent", ["cleanup", "--name-prefix", prefix, "--pin-dir", $"/sys/fs/bpf/{prefix}", "--state-dir", state, .. extra]);
    }

    /// <summary>
    /// Starts the agent and waits until <paramref name="answers"/> says it serves, or until it exits (its exit code and
    /// error output are returned, the process is null). 60 s deadline.
    /// </summary>
    public static (Process? Agent, int ExitCode, string Stderr) Start(IEnumerable<string> arguments, Func<bool> answers) =>
        Start(arguments, answers, new StringBuilder());

    /// <summary>As above; <paramref name="stderr"/> keeps collecting the agent's error output for as long as it runs.</summary>
    public static (Process? Agent, int ExitCode, string Stderr) Start(IEnumerable<string> arguments, Func<bool> answers,
        StringBuilder stderr)
    {
        ArgumentNullException.ThrowIfNull(answers);
        ArgumentNullException.ThrowIfNull(stderr);
        var start = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add(Path.Combine(AppContext.BaseDirectory, "membrane.dll"));
        start.ArgumentList.Add("agent");
        foreach (var a in arguments)
        {
            start.ArgumentList.Add(a);
        }
        var agent = Process.Start(start)!;
        agent.ErrorDataReceived += (_, e) =>
        {
            lock (stderr)
            {
                stderr.AppendLine(e.Data);
            }
        };
        agent.BeginErrorReadLine();
        agent.BeginOutputReadLine();
        var watch = Stopwatch.StartNew();
        while (watch.Elapsed < TimeSpan.FromSeconds(60))
        {
            if (agent.HasExited)
            {
                agent.WaitForExit(); // drains the error output
                lock (stderr)
                {
                    return (null, agent.ExitCode, stderr.ToString());
                }
            }
            if (answers())
            {
                return (agent, 0, "");
            }
            Thread.Sleep(100);
        }
        agent.Kill();
        throw new TimeoutException("the agent did not start within 60 s");
    }
}
