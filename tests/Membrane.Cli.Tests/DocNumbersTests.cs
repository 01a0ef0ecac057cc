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

    private static string Root
    {
        get
        {
            var dir = new DirectoryInfo(AppContext.BaseDirectory);
            while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Membrane.slnx")))
            {
                dir = dir.Parent;
            }
            return dir!.FullName;
        }
    }

    /// <summary>A measured figure: a ratio (1.08×), a time (84 ms, 0.4 s), a share of a limit (1.08%) or throughput.</summary>
    [GeneratedRegex(@"\d[\d,.]*\s?(×|ms\b|ns\b|%|MiB/s|pings/s)")]
    private static partial Regex Figure();

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
        var outside = readme[..begin] + readme[(end + End.Length)..];
        var quoted = Figure().Matches(outside).Select(m => m.Value).ToList();
        Assert.True(quoted.Count == 0, $"README.md quotes figures outside the generated block: {string.Join(", ", quoted)}");
    }
}
