using System.Text.RegularExpressions;

namespace Membrane.Cli.Tests;

/// <summary>
/// Numbers have one source: the README quotes the benchmark report's headline (written by bench/run between markers)
/// and no measured figure outside that block; the block holds nothing the current report does not.
/// </summary>
public sealed partial class DocNumbersTests
{
    private const string Begin = "<!-- bench/run: summary (generated from docs/benchmarks.md; do not edit) -->";
    private const string End = "<!-- /bench/run: summary -->";

    private static string Root => Repository.Root;

    /// <summary>
    /// A measured figure: a ratio (1.08×), a time (84 ms, 0.4 s: seconds with a fraction, whole seconds being the
    /// docs' timeouts and defaults), a share of a limit (1.08%) or throughput.
    /// </summary>
    [GeneratedRegex(@"\d[\d,.]*\s?(×|ms\b|ns\b|%|MiB/s|pings/s)|\d+\.\d+\s?s\b")]
    private static partial Regex Figure();

    [GeneratedRegex(
        @"<!-- bench/run: section (\d+) table \(generated from docs/benchmarks\.md; do not edit\) -->\n" +
        @"(.*?)<!-- /bench/run: section \1 table -->",
        RegexOptions.Singleline)]
    private static partial Regex SectionTable();

    [GeneratedRegex(@"^```.*?^```", RegexOptions.Singleline | RegexOptions.Multiline)]
    private static partial Regex FencedBlock();

    [GeneratedRegex(@"`[^`\n]*`")]
    private static partial Regex InlineCode();

    /// <summary>
    /// Figures that are no measurement: limits, defaults and kernel facts the docs state. Everything else with a unit
    /// is a measurement and belongs to the report.
    /// </summary>
    private static readonly string[] Constants = ["4 ms at the usual", "every 50 ms", "1 to 60,000 ms", "(every\n   200 ms)", "above 90%"];

    [Fact]
    public void TheReadmeQuotesTheReportsHeadlineAndNothingElse()
    {
        var readme = File.ReadAllText(Path.Combine(Root, "README.md"));
        var report = File.ReadAllText(Path.Combine(Root, "docs", "benchmarks.md"));
        var begin = readme.IndexOf(Begin, StringComparison.Ordinal);
        var end = readme.IndexOf(End, StringComparison.Ordinal);
        Assert.True(begin >= 0 && end > begin, "README.md has no summary block written by bench/run");
        var block = readme[(begin + Begin.Length)..end].Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.NotEmpty(block);
        Assert.All(block, line => Assert.Contains(line, report, StringComparison.Ordinal));
        AssertNoFigures("README.md", readme[..begin] + readme[(end + End.Length)..]);
    }

    /// <summary>
    /// Every doc but the report quotes measured figures only in the tables bench/run writes into it (each the report's
    /// own), never in prose; command output shown in code blocks is an example, not a claim.
    /// </summary>
    [Fact]
    public void DocsQuoteMeasuredFiguresOnlyInTablesTheReportWrites()
    {
        var report = File.ReadAllText(Path.Combine(Root, "docs", "benchmarks.md"));
        var docs = Directory.GetFiles(Path.Combine(Root, "docs"), "*.md").Where(f => Path.GetFileName(f) != "benchmarks.md").ToList();
        Assert.True(docs.Count > 10);
        foreach (var doc in docs)
        {
            var text = File.ReadAllText(doc);
            foreach (Match table in SectionTable().Matches(text))
            {
                var rows = table.Groups[2].Value.Split('\n', StringSplitOptions.RemoveEmptyEntries);
                Assert.True(rows.Length >= 3, $"{Path.GetFileName(doc)}: the table of section {table.Groups[1].Value} is empty");
                Assert.All(rows, row => Assert.Contains(row, report, StringComparison.Ordinal));
            }
            AssertNoFigures(Path.GetFileName(doc), SectionTable().Replace(text, ""));
        }
    }

    private static void AssertNoFigures(string name, string text)
    {
        var prose = InlineCode().Replace(FencedBlock().Replace(text, ""), "");
        foreach (var constant in Constants)
        {
            prose = prose.Replace(constant, "", StringComparison.Ordinal);
        }
        var quoted = Figure().Matches(prose).Select(m => m.Value).ToList();
        Assert.True(quoted.Count == 0, $"{name} quotes measured figures outside the tables bench/run writes: {string.Join(", ", quoted)}");
    }
}
