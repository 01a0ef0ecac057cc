using System.Text;
using System.Text.RegularExpressions;

namespace Membrane.Agent.Tests;

/// <summary>
/// docs/getting-started.md followed literally: every shell block from "2. Create pods" on runs in bash, in order,
/// against an agent of its own (section 1's build and start are this fixture's; its cleanup too), with `membrane` the
/// built CLI. Each command must exit as the guide says (0, or 1 where its comment says denied), and every line of an
/// output block the guide shows must be printed, times and durations aside.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed partial class GettingStartedTests : IDisposable
{
    private readonly DocAgent _agent = new("mbgs");

    /// <summary>What the fixture does instead of the guide's lines (section 1's setup and start, section 6's stop and cleanup).</summary>
    private static readonly Regex[] Provided =
    [
        ProvidedLine(@"^bash scripts/setup\.sh"), ProvidedLine(@"^dotnet build src/Membrane\.(Cli|Agent) -c Release"),
        ProvidedLine(@"^alias membrane="), ProvidedLine(@"^membrane agent &"), ProvidedLine(@"^kill %1"),
        ProvidedLine(@"^membrane cleanup$"),
    ];

    private static Regex ProvidedLine(string pattern) => new(pattern, RegexOptions.CultureInvariant);

    public void Dispose() => _agent.Dispose();

    private sealed record Block(string Section, List<string> Commands, List<string> Expected);

    /// <summary>The guide's shell blocks with the output block that follows each, if any (continuations joined).</summary>
    private static List<Block> Blocks(string markdown)
    {
        var blocks = new List<Block>();
        var lines = markdown.Split('\n');
        var section = "";
        for (var i = 0; i < lines.Length; i++)
        {
            if (lines[i].StartsWith("## ", StringComparison.Ordinal))
            {
                section = lines[i][3..];
            }
            if (lines[i] != "```sh")
            {
                continue;
            }
            var commands = new List<string>();
            for (i++; lines[i] != "```"; i++)
            {
                var line = lines[i];
                while (line.EndsWith('\\'))
                {
                    line = line[..^1] + lines[++i].Trim();
                }
                commands.Add(line);
            }
            var expected = new List<string>();
            if (i + 1 < lines.Length && lines[i + 1] == "```")
            {
                for (i += 2; lines[i] != "```"; i++)
                {
                    expected.Add(lines[i]);
                }
            }
            blocks.Add(new Block(section, commands, expected));
        }
        return blocks;
    }

    [GeneratedRegex(@"\s+#\s*(.*)$")]
    private static partial Regex Comment();

    [GeneratedRegex(@"\d{2}:\d{2}:\d{2}\.\d{3}")]
    private static partial Regex Clock();

    [GeneratedRegex(@"\d+(\.\d+)? ms")]
    private static partial Regex Duration();

    [GeneratedRegex(@"\s+")]
    private static partial Regex Spaces();

    private static string Normal(string line) =>
        Spaces().Replace(Duration().Replace(Clock().Replace(line, "HH:MM:SS"), "N ms"), " ").Trim();

    [Fact]
    public void TheGuideRunsAsWritten()
    {
        var blocks = Blocks(File.ReadAllText(Path.Combine(DocScript.Root, "docs", "getting-started.md")))
            .Where(b => b.Section.Length > 0 && char.IsDigit(b.Section[0]))
            .ToList();
        Assert.True(blocks.Count >= 6, $"only {blocks.Count} shell blocks in the numbered sections");
        var ran = 0;
        foreach (var block in blocks)
        {
            var script = new StringBuilder();
            script.Append(DocScript.Preamble(_agent.Socket));
            var expectations = new List<(string Command, int? Code)>();
            foreach (var line in block.Commands)
            {
                var command = Comment().Replace(line, "").Trim();
                if (Provided.Any(p => p.IsMatch(command)))
                {
                    continue;
                }
                var comment = Comment().Match(line).Groups[1].Value;
                if (command.EndsWith('&'))
                {
                    Assert.StartsWith("membrane monitor", command, StringComparison.Ordinal);
                    // Started in the background (the CLI itself, so that the job is the process to stop at the end): wait,
                    // with a deadline, until it streams, as a reader would.
                    script.AppendLine($"{DocScript.Cli} {command["membrane ".Length..^1].Trim()} 2>\"$0.monitor\" &");
                    script.AppendLine(
                        "timeout 20 bash -c 'until grep -q Listening \"$0\" 2>/dev/null; do sleep 0.05; done' \"$0.monitor\"");
                    continue;
                }
                int? code = comment.StartsWith("denied", StringComparison.Ordinal) ? 1
                    : comment.StartsWith("allowed", StringComparison.Ordinal) ? 0
                    : command.Contains("connectivity probe", StringComparison.Ordinal) ? null : 0;
                script.AppendLine(command);
                script.AppendLine($"echo \"__exit {expectations.Count} $?\"");
                expectations.Add((command, code));
                ran++;
            }
            script.AppendLine("jobs -p | xargs -r kill 2>/dev/null; wait 2>/dev/null; rm -f \"$0.monitor\"");
            var output = DocScript.Bash(script.ToString());
            var actual = output.Split('\n').Select(Normal).ToList();
            for (var i = 0; i < expectations.Count; i++)
            {
                var exit = actual.FirstOrDefault(l => l.StartsWith($"__exit {i} ", StringComparison.Ordinal));
                Assert.True(exit is not null, $"{block.Section}: '{expectations[i].Command}' never finished:\n{output}");
                var code = int.Parse(exit.Split(' ')[2], System.Globalization.CultureInfo.InvariantCulture);
                Assert.True(expectations[i].Code is null ? code is 0 or 1 : code == expectations[i].Code,
                    $"{block.Section}: '{expectations[i].Command}' exited {code}:\n{output}");
            }
            foreach (var line in block.Expected.Select(Normal).Where(l => l.Length > 0))
            {
                Assert.True(actual.Contains(line), $"{block.Section}: the guide shows '{line}', the commands printed:\n{output}");
            }
        }
        Assert.True(ran >= 15, $"only {ran} commands ran");
    }
}
