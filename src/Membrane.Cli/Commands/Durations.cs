using System.Globalization;

namespace Membrane.Cli.Commands;

/// <summary>The CLI's one way to read a duration: a whole number with <c>ms</c>, <c>s</c>, <c>m</c> or <c>h</c>.</summary>
internal static class Durations
{
    public static TimeSpan Parse(string text, string option, TimeSpan longest, string examples, string? longestText = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        var (number, unit) = text.EndsWith("ms", StringComparison.Ordinal) ? (text[..^2], "ms") : text.Length > 1 ? (text[..^1], text[^1..])
            : (text, "");
        if (int.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out var n) && n <= 1_000_000)
        {
            TimeSpan? value = unit switch
            {
                "ms" => TimeSpan.FromMilliseconds(n),
                "s" => TimeSpan.FromSeconds(n),
                "m" => TimeSpan.FromMinutes(n),
                "h" => TimeSpan.FromHours(n),
                _ => null,
            };
            if (value is { } v && v <= longest)
            {
                return v;
            }
        }
        throw new CliException($"{option} \"{text}\" is not a duration{(longestText is null ? "" : $" of at most {longestText}")} " +
            $"({examples})");
    }
}
