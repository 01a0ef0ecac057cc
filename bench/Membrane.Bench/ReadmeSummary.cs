namespace Membrane.Bench;

/// <summary>The README's block of figures, between its markers, replaced by the report's headline.</summary>
public static class ReadmeSummary
{
    public const string Begin = "<!-- bench/run: summary (generated from docs/benchmarks.md; do not edit) -->";
    public const string End = "<!-- /bench/run: summary -->";

    public static string Replace(string readme, IReadOnlyList<string> headline)
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
}
