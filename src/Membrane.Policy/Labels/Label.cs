namespace Membrane.Policy.Labels;

/// <summary>Where a label came from. Selectors may name a source (<c>k8s:app</c>) or accept any (<c>any:app</c>, <c>app</c>).</summary>
public static class LabelSource
{
    public const string Any = "any";
    public const string Kubernetes = "k8s";
    public const string Reserved = "reserved";
    public const string Cidr = "cidr";
    public const string Unspecified = "unspec";

    private static readonly HashSet<string> Known = [Any, Kubernetes, Reserved, Cidr, Unspecified, "container"];

    /// <summary>Splits <c>source:key</c>; a prefix that is not a known source stays part of the key.</summary>
    public static (string Source, string Key) Split(string text, string defaultSource)
    {
        ArgumentNullException.ThrowIfNull(text);
        var colon = text.IndexOf(':', StringComparison.Ordinal);
        if (colon > 0 && Known.Contains(text[..colon]))
        {
            return (text[..colon], text[(colon + 1)..]);
        }
        return (defaultSource, text);
    }
}

/// <summary>One label: source, key and value.</summary>
public readonly record struct Label(string Source, string Key, string Value)
{
    public override string ToString() => Value.Length == 0 ? $"{Source}:{Key}" : $"{Source}:{Key}={Value}";
}
