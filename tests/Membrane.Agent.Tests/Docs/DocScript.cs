using System.Diagnostics;

namespace Membrane.Agent.Tests;

/// <summary>What the tests that run the docs share: where the repository is, and bash to run a doc's lines in.</summary>
internal static class DocScript
{
    /// <summary>The repository's root (the directory of Membrane.slnx above the test's output).</summary>
    public static string Root
    {
        get
        {
            var dir = new DirectoryInfo(AppContext.BaseDirectory);
            while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Membrane.slnx")))
            {
                dir = dir.Parent;
            }
            return dir?.FullName
                ?? throw new InvalidOperationException("the repository root (Membrane.slnx) is not above the test's output");
        }
    }

    /// <summary>The built CLI as a shell command.</summary>
    public static string Cli => $"dotnet '{Path.Combine(AppContext.BaseDirectory, "membrane.dll")}'";

    /// <summary>
    /// The first lines of every script: <c>membrane</c> is the built CLI, talking to the agent on
    /// <paramref name="socket"/>, from the repository's root (where the docs' relative paths start).
    /// </summary>
    public static string Preamble(string socket) =>
        $"membrane() {{ {Cli} \"$@\"; }}\nexport MEMBRANE_SOCKET='{socket}'\ncd '{Root}'\n";

    /// <summary>Runs <paramref name="script"/> in bash (two minutes at most) and returns what it printed, output then errors.</summary>
    public static string Bash(string script)
    {
        var file = Path.Combine(Path.GetTempPath(), $"mbdoc-{Guid.NewGuid():N}.sh");
        File.WriteAllText(file, script);
        try
        {
            var start = new ProcessStartInfo("bash", [file]) { RedirectStandardOutput = true, RedirectStandardError = true };
            using var bash = Process.Start(start)!;
            var stdout = bash.StandardOutput.ReadToEndAsync();
            var stderr = bash.StandardError.ReadToEndAsync();
            var done = bash.WaitForExit(TimeSpan.FromMinutes(2)) && Task.WaitAll([stdout, stderr], TimeSpan.FromSeconds(10));
            if (!done)
            {
                bash.Kill(entireProcessTree: true);
            }
            Assert.True(done, "a block of the doc ran for two minutes, or left a process holding its output");
            return stdout.Result + stderr.Result;
        }
        finally
        {
            File.Delete(file);
        }
    }
}

/// <summary>
/// An agent of one doc test's own, started as an operator starts it: its name prefix, its state directory
/// (/tmp/PREFIX-state) and its pins (/sys/fs/bpf/PREFIX), cleaned up before it starts and after it stops.
/// </summary>
internal sealed class DocAgent : IDisposable
{
    private readonly System.Diagnostics.Process _process;

    public DocAgent(string prefix, params string[] options)
    {
        Prefix = prefix;
        State = Path.Combine(Path.GetTempPath(), $"{prefix}-state");
        Socket = Path.Combine(State, "membrane.sock");
        AgentUnderTest.Cleanup(Prefix, State);
        string[] arguments =
        [
            "--state-dir", State, "--name-prefix", Prefix, "--pin-dir", $"/sys/fs/bpf/{Prefix}", "--metrics-address", "off",
            .. options,
        ];
        var (agent, code, stderr) = AgentUnderTest.Start(arguments,
            () => File.Exists(Socket) && AgentUnderTest.Cli(Socket, "status").Code == 0);
        _process = agent ?? throw new InvalidOperationException($"the agent exited with {code}: {stderr}");
    }

    public string Prefix { get; }

    public string State { get; }

    public string Socket { get; }

    public void Dispose()
    {
        _process.Kill();
        _process.WaitForExit();
        _process.Dispose();
        AgentUnderTest.Cleanup(Prefix, State);
    }
}
