using System.CommandLine;
using System.Text.RegularExpressions;
using Membrane.Agent.Hosting;

namespace Membrane.Cli.Tests;

/// <summary>
/// One dialect in every help text: the exit-code contract after each command's help, named values lower-case
/// (accepted in any case), and the agent's help naming it as users run it.
/// </summary>
public sealed partial class HelpTests
{
    [GeneratedRegex(@"<[A-Z][a-z]+(\|[A-Z][a-z]+)+>")]
    private static partial Regex PascalCaseChoices();

    private static IEnumerable<string[]> Paths(Command command, string[] prefix)
    {
        foreach (var sub in command.Subcommands.Where(c => !c.Hidden))
        {
            string[] path = [.. prefix, sub.Name];
            yield return path;
            foreach (var deeper in Paths(sub, path))
            {
                yield return deeper;
            }
        }
    }

    [Fact]
    public void EveryCommandsHelpEndsWithTheExitStatusAndShowsLowerCaseChoices()
    {
        var paths = Paths(CliApp.Create(new CliOutput(TextWriter.Null, TextWriter.Null)), []).Where(p => p[0] is not ("agent" or "cleanup"))
            .ToList();
        Assert.True(paths.Count > 30, $"only {paths.Count} commands found");
        foreach (var path in paths)
        {
            using StringWriter stdout = new(), stderr = new();
            Assert.Equal(CliApp.Success, CliApp.Run([.. path, "--help"], stdout, stderr));
            var help = stdout.ToString();
            Assert.True(help.TrimEnd().EndsWith(CliApp.ExitStatus, StringComparison.Ordinal), $"membrane {string.Join(' ', path)} --help");
            Assert.DoesNotMatch(PascalCaseChoices(), help);
        }
    }

    [Fact]
    public void TheAgentsHelpNamesItMembraneAgentAndItsChoicesTakeAnyCase()
    {
        var help = AgentHelp();
        Assert.Contains("  membrane agent [command] [options]", help, StringComparison.Ordinal);
        Assert.DoesNotContain("membrane-agent", help, StringComparison.Ordinal);
        Assert.Contains("--host-routing <bpf|legacy>", help, StringComparison.Ordinal);
        Assert.Contains("--runtime <", help, StringComparison.Ordinal);
        Assert.DoesNotMatch(PascalCaseChoices(), help);
        Assert.Empty(AgentCommandLine.Parse(["--host-routing", "LEGACY", "--routing-mode", "Tunnel", "--runtime", "CNI"]).Errors);
        var wrong = Assert.Single(AgentCommandLine.Parse(["--host-routing", "fast"]).Errors);
        Assert.Equal("--host-routing: 'fast' is not one of bpf, legacy", wrong.Message);
        using StringWriter stdout = new(), stderr = new();
        CliApp.Run(["observe", "--verdict", "sometimes"], stdout, stderr);
        Assert.Contains("--verdict: 'sometimes' is not one of dropped, forwarded, audit", stderr.ToString(), StringComparison.Ordinal);
    }

    private static readonly Lock ConsoleGate = new();

    private static string AgentHelp()
    {
        lock (ConsoleGate)
        {
            var original = Console.Out;
            using var captured = new StringWriter();
            Console.SetOut(captured);
            try
            {
                Assert.Equal(0, AgentCommandLine.RunAsync(["--help"]).GetAwaiter().GetResult());
            }
            finally
            {
                Console.SetOut(original);
            }
            return captured.ToString();
        }
    }
}
