using System.Text.RegularExpressions;

namespace Membrane.Cli.Tests;

/// <summary>
/// Every fenced block of README.md and docs/*.md that holds a <c>membrane</c> command is run by a doc test
/// (tests/Membrane.Agent.Tests/Docs: the numbered sections of getting-started.md, the "$ " transcripts of cli.md and
/// observe.md, every shell block of troubleshooting.md), or says right above it why not:
/// <c>&lt;!-- doc tests: not run (REASON) --&gt;</c>. Such blocks still parse (DocCommandLineTests).
/// </summary>
public sealed partial class DocRunCoverageTests
{
    private static string Root => Repository.Root;

    [GeneratedRegex(@"^<!-- doc tests: not run \(.{10,}\) -->$")]
    private static partial Regex NotRunMarker();

    [GeneratedRegex(@"^(\$ )?(sudo )?membrane( |$)")]
    private static partial Regex Command();

    private sealed record Block(string File, int Line, string Section, bool Shell, List<string> Lines, string? Above);

    private static IEnumerable<Block> Blocks(string path)
    {
        var lines = File.ReadAllLines(path);
        var section = "";
        for (var i = 0; i < lines.Length; i++)
        {
            if (lines[i].StartsWith("## ", StringComparison.Ordinal))
            {
                section = lines[i][3..];
            }
            if (!lines[i].StartsWith("```", StringComparison.Ordinal))
            {
                continue;
            }
            var open = i;
            var above = lines.Take(open).LastOrDefault(l => l.Trim().Length > 0);
            var content = new List<string>();
            for (i++; i < lines.Length && !lines[i].StartsWith("```", StringComparison.Ordinal); i++)
            {
                content.Add(lines[i]);
            }
            yield return new Block(Path.GetFileName(path), open + 1, section, lines[open] == "```sh", content, above);
        }
    }

    /// <summary>Whether a doc test runs the block (see the runners in tests/Membrane.Agent.Tests/Docs).</summary>
    private static bool Run(Block block) => block.File switch
    {
        "getting-started.md" => block.Shell && block.Section.Length > 0 && char.IsDigit(block.Section[0]),
        "cli.md" or "observe.md" => block.Lines.Count > 0 && block.Lines[0].StartsWith("$ ", StringComparison.Ordinal),
        "troubleshooting.md" => block.Shell,
        _ => false,
    };

    [Fact]
    public void EveryBlockWithACommandIsRunOrSaysWhyNot()
    {
        var files = Directory.GetFiles(Path.Combine(Root, "docs"), "*.md").Append(Path.Combine(Root, "README.md"));
        var blocks = files.SelectMany(Blocks).Where(b => b.Lines.Any(l => Command().IsMatch(l.Trim()))).ToList();
        Assert.True(blocks.Count > 20, $"only {blocks.Count} blocks with commands");
        var unaccounted = blocks.Where(b => !Run(b) && !NotRunMarker().IsMatch(b.Above?.Trim() ?? "")).ToList();
        Assert.True(unaccounted.Count == 0, "blocks with membrane commands that no doc test runs and no marker explains:\n" +
            string.Join("\n", unaccounted.Select(b => $"  {b.File}:{b.Line}: {b.Lines.First(l => Command().IsMatch(l.Trim())).Trim()}")));
        // A marker on a block a doc test runs would be a false excuse.
        var falseMarks = blocks.Where(b => Run(b) && NotRunMarker().IsMatch(b.Above?.Trim() ?? "")).ToList();
        Assert.True(falseMarks.Count == 0, string.Join("\n", falseMarks.Select(b => $"  {b.File}:{b.Line} is run, yet marked")));
    }
}
