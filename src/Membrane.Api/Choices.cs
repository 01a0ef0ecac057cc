using System.CommandLine;

namespace Membrane.Api;

/// <summary>
/// Options restricted to named values, one dialect for the CLI and the agent: the values are lower-case in help
/// (<c>&lt;bpf|legacy&gt;</c>), accepted in any case, and the option's value is the listed spelling.
/// </summary>
public static class Choices
{
    public static Option<T> OneOf<T>(this Option<T> option, params string[] values)
        where T : class?
    {
        ArgumentNullException.ThrowIfNull(option);
        ArgumentNullException.ThrowIfNull(values);
        option.HelpName = string.Join('|', values);
        option.CompletionSources.Add(values);
        option.CustomParser = result =>
        {
            var token = result.Tokens.Count > 0 ? result.Tokens[^1].Value : "";
            var match = values.FirstOrDefault(v => v.Equals(token, StringComparison.OrdinalIgnoreCase));
            if (match is null)
            {
                result.AddError($"{option.Name}: '{token}' is not one of {string.Join(", ", values)}");
                return default;
            }
            return (T)(object)match;
        };
        return option;
    }

    /// <summary>The enum member a value of <see cref="OneOf"/> names (its lower-case spelling).</summary>
    public static TEnum Parse<TEnum>(string value)
        where TEnum : struct, Enum => Enum.Parse<TEnum>(value, ignoreCase: true);

    /// <summary>An enum's members as <see cref="OneOf"/> lists them.</summary>
    public static string[] Of<TEnum>()
        where TEnum : struct, Enum => [.. Enum.GetNames<TEnum>().Select(n => n.ToLowerInvariant())];
}
