using System.Diagnostics;
using System.Text;

namespace Membrane.Agent.Tests;

/// <summary>
/// A service manager stops the agent with SIGTERM: it must shut down cleanly and say so with exit status 0, its pinned
/// state left for the next start to adopt. (The other tests kill it with SIGKILL, as after a crash.)
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class AgentShutdownTests : IDisposable
{
    private readonly string _prefix = $"mbst{Environment.ProcessId % 10000}";
    private readonly string _state = Directory.CreateTempSubdirectory("membrane-shutdown-").FullName;

    [Fact]
    public void SigtermStopsTheAgentWithStatusZeroAndItsStateKept()
    {
        var socket = Path.Combine(_state, "membrane.sock");
        var stderr = new StringBuilder();
        var (agent, code, failure) = AgentUnderTest.Start(
            ["--state-dir", _state, "--name-prefix", _prefix, "--pin-dir", $"/sys/fs/bpf/{_prefix}", "--metrics-address", "off"],
            () => File.Exists(socket) && AgentUnderTest.Cli(socket, "status").Code == 0, stderr);
        Assert.True(agent is not null, $"the agent exited with {code}: {failure}");
        using (agent)
        {
            using (var term = Process.Start("kill", ["-TERM", $"{agent.Id}"]))
            {
                term.WaitForExit();
            }
            Assert.True(agent.WaitForExit(TimeSpan.FromSeconds(30)), "the agent did not stop within 30 s of SIGTERM");
            agent.WaitForExit(); // the error output drained
            string output;
            lock (stderr)
            {
                output = stderr.ToString();
            }
            Assert.True(agent.ExitCode == 0, $"exit status {agent.ExitCode} after SIGTERM: {output}");
            Assert.DoesNotContain("Unhandled exception", output, StringComparison.Ordinal);
        }
        // Stopped, not cleaned up: the maps stay pinned for the next start.
        Assert.True(Directory.Exists($"/sys/fs/bpf/{_prefix}"), "the pinned maps went with the agent");
    }

    public void Dispose()
    {
        AgentUnderTest.Cleanup(_prefix, _state); // the state directory too
        if (Directory.Exists(_state))
        {
            Directory.Delete(_state, recursive: true);
        }
    }
}
