namespace Membrane.Cli.Commands;

/// <summary>The CLI's durations (<see cref="Api.Durations"/>), refused with the option's name and examples.</summary>
internal static class Durations
{
    public static TimeSpan Parse(string text, string option, TimeSpan longest, string examples, string? longestText = null)
    {
        ArgumentNullException.ThrowIfNull(text);
        return Api.Durations.TryParse(text, longest, out var value) ? value
            : throw new CliException($"{option} \"{text}\" is not a duration{(longestText is null ? "" : $" of at most {longestText}")} " +
                $"({examples})");
    }
}
