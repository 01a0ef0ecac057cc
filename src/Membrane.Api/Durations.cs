using System.Globalization;

namespace Membrane.Api;

/// <summary>One way to read a duration everywhere: a whole number with <c>ms</c>, <c>s</c>, <c>m</c> or <c>h</c>.</summary>
public static class Durations
{
    public static bool TryParse(string text, TimeSpan longest, out TimeSpan value)
    {
        ArgumentNullException.ThrowIfNull(text);
        value = default;
        var (number, unit) = text.EndsWith("ms", StringComparison.Ordinal) ? (text[..^2], "ms") : text.Length > 1 ? (text[..^1], text[^1..])
            : (text, "");
        if (!int.TryParse(number, NumberStyles.None, CultureInfo.InvariantCulture, out var n) || n > 1_000_000)
        {
            return false;
        }
        TimeSpan? parsed = unit switch
        {
            "ms" => TimeSpan.FromMilliseconds(n),
            "s" => TimeSpan.FromSeconds(n),
            "m" => TimeSpan.FromMinutes(n),
            "h" => TimeSpan.FromHours(n),
            _ => null,
        };
        if (parsed is not { } v || v > longest)
        {
            return false;
        }
        value = v;
        return true;
    }
}
