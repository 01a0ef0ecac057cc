using System.Text.RegularExpressions;

namespace Membrane.Bench;

/// <summary>
/// The figures the README and docs/ quote, written by bench/run between their markers from the report it just wrote:
/// the README's summary (the report's headline) and, in any doc, a section's table
/// (<c>&lt;!-- bench/run: section N table … --&gt;</c>). Nothing else in them quotes a measured figure.
/// </summary>
public static partial class GeneratedBlocks
{
    public const string Begin = "<!-- bench/run: summary (generated from docs/benchmarks.md; do not edit) -->";
    public const string End = "<!-- /bench/run: summary -->";

    [GeneratedRegex(
        @"(<!-- bench/run: section (\d+) table \(generated from docs/benchmarks\.md; do not edit\) -->\n)" +
        @"(.*?)(<!-- /bench/run: section \2 table -->)",
        RegexOptions.Singleline)]
    private static partial Regex SectionTable();

    /// <summary>The README with its summary block replaced by <paramref name="headline"/>.</summary>
    public static string ReplaceSummary(string readme, IReadOnlyList<string> headline)
    {
        ArgumentNullException.ThrowIfNull(readme);
        ArgumentNullException.ThrowIfNull(headline);
        var begin = readme.IndexOf(Begin, StringComparison.Ordinal);
        var end = readme.IndexOf(End, StringComparison.Ordinal);
        if (begin < 0 || end < begin)
        {
            throw new InvalidOperationException($"README.md has no summary block ({Begin} … {End})");
        }
        return readme[..(begin + Begin.Length)] + "\n" + string.Join("\n", headline) + "\n" + readme[end..];
    }

    /// <summary>A doc with each section-table block replaced by that section's first table in <paramref name="report"/>.</summary>
    public static string ReplaceTables(string doc, string report) =>
        SectionTable().Replace(doc, m => m.Groups[1].Value + string.Join("\n", Table(report, int.Parse(m.Groups[2].Value,
            System.Globalization.CultureInfo.InvariantCulture))) + "\n" + m.Groups[4].Value);

    /// <summary>The first table (header, separator, rows) under the report's heading "## N.".</summary>
    public static IReadOnlyList<string> Table(string report, int section)
    {
        ArgumentNullException.ThrowIfNull(report);
        var lines = report.Split('\n');
        var heading = Array.FindIndex(lines, l => l.StartsWith($"## {section}.", StringComparison.Ordinal));
        if (heading < 0)
        {
            throw new InvalidOperationException($"the report has no section {section}");
        }
        return lines.Skip(heading + 1).TakeWhile(l => !l.StartsWith("## ", StringComparison.Ordinal))
            .SkipWhile(l => !l.StartsWith('|')).TakeWhile(l => l.StartsWith('|')).ToList();
    }
}
