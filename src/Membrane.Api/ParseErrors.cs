using System.Text.RegularExpressions;

namespace Membrane.Api;

/// <summary>Command-line parse errors in plain words: the parser names .NET types ("as expected type 'System.Int32'").</summary>
public static partial class ParseErrors
{
    [GeneratedRegex(@"as expected type '([^']+)'")]
    private static partial Regex ExpectedType();

    public static string Plain(string message)
    {
        ArgumentNullException.ThrowIfNull(message);
        return ExpectedType().Replace(message, m => m.Groups[1].Value switch
        {
            var t when t.Contains("Int32", StringComparison.Ordinal) || t.Contains("Int64", StringComparison.Ordinal)
                || t.Contains("UInt", StringComparison.Ordinal) => "as a whole number",
            var t when t.Contains("Boolean", StringComparison.Ordinal) => "as true or false",
            var t when t.Contains("Double", StringComparison.Ordinal) => "as a number",
            _ => "as one of the values --help lists",
        });
    }
}
