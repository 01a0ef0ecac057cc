using System.Globalization;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Api;

/// <summary>Collects errors for one object of one file.</summary>
internal sealed class ParseContext(string file, List<PolicyError> errors)
{
    public string File { get; } = file;

    public string Object { get; set; } = "";

    public int ErrorCount => errors.Count;

    public void Error(string path, YamlNode? node, string message)
    {
        var mark = node?.Start ?? Mark.Empty;
        errors.Add(new PolicyError(File, Object, path, message, (int)mark.Line, (int)mark.Column));
    }
}

internal static class FieldPath
{
    public static string Child(string path, string key) => path.Length == 0 ? key : $"{path}.{key}";

    public static string Index(string path, int index) => $"{path}[{index}]";
}

/// <summary>
/// Reads one YAML mapping field by field. Every key must be taken, ignored or reported as unsupported before
/// <see cref="Finish"/>, which reports the rest as unknown fields — nothing is silently dropped.
/// </summary>
internal sealed class MapReader
{
    private readonly ParseContext _ctx;
    private readonly YamlMappingNode _node;
    private readonly HashSet<string> _seen = new(StringComparer.Ordinal);

    private MapReader(ParseContext ctx, YamlMappingNode node, string path)
    {
        _ctx = ctx;
        _node = node;
        Path = path;
    }

    public string Path { get; }

    public YamlNode Node => _node;

    public static MapReader? Of(ParseContext ctx, YamlNode? node, string path)
    {
        if (node is YamlMappingNode map)
        {
            return new MapReader(ctx, map, path);
        }
        if (node is not null && !IsNull(node))
        {
            ctx.Error(path, node, $"expected a mapping, found {Describe(node)}");
        }
        return node is null || IsNull(node) ? new MapReader(ctx, new YamlMappingNode(), path) : null;
    }

    public string PathOf(string key) => FieldPath.Child(Path, key);

    public bool Has(string key) => Lookup(key) is { } n && !IsNull(n);

    public YamlNode? Take(string key)
    {
        _seen.Add(key);
        var node = Lookup(key);
        return node is null || IsNull(node) ? null : node;
    }

    public void Ignore(params string[] keys)
    {
        foreach (var key in keys)
        {
            _seen.Add(key);
        }
    }

    /// <summary>Rejects a field the reference accepts but Membrane cannot enforce, naming it.</summary>
    public void Unsupported(string key, string what)
    {
        _seen.Add(key);
        if (Lookup(key) is { } node && !IsNull(node))
        {
            _ctx.Error(PathOf(key), node, $"{what} is not supported by Membrane; remove the field (it would not be enforced)");
        }
    }

    public void Finish()
    {
        foreach (var (keyNode, value) in _node.Children)
        {
            var key = (keyNode as YamlScalarNode)?.Value ?? keyNode.ToString();
            if (!_seen.Contains(key))
            {
                _ctx.Error(PathOf(key), keyNode, "unknown field");
            }
        }
    }

    public IEnumerable<string> Keys => _node.Children.Keys.OfType<YamlScalarNode>().Select(k => k.Value ?? "");

    private YamlNode? Lookup(string key) =>
        _node.Children.TryGetValue(new YamlScalarNode(key), out var value) ? value : null;

    public string? String(string key, bool required = false)
    {
        var node = Take(key);
        if (node is null)
        {
            if (required)
            {
                _ctx.Error(PathOf(key), _node, "is required");
            }
            return null;
        }
        return Yaml.AsString(_ctx, node, PathOf(key));
    }

    public bool? Bool(string key)
    {
        var node = Take(key);
        if (node is null)
        {
            return null;
        }
        if (node is YamlScalarNode { Value: var v } && v is "true" or "false" or "True" or "False")
        {
            return v is "true" or "True";
        }
        _ctx.Error(PathOf(key), node, $"expected true or false, found {Describe(node)}");
        return null;
    }

    /// <summary>A list field; each item is handed to <paramref name="read"/> with its path.</summary>
    public List<T>? List<T>(string key, Func<YamlNode, string, T?> read)
    {
        var node = Take(key);
        if (node is null)
        {
            return null;
        }
        if (node is not YamlSequenceNode seq)
        {
            _ctx.Error(PathOf(key), node, $"expected a list, found {Describe(node)}");
            return null;
        }
        var result = new List<T>();
        for (var i = 0; i < seq.Children.Count; i++)
        {
            var item = read(seq.Children[i], FieldPath.Index(PathOf(key), i));
            if (item is not null)
            {
                result.Add(item);
            }
        }
        return result;
    }

    /// <summary>A map of string to string (labels, matchLabels).</summary>
    public Dictionary<string, string>? StringMap(string key)
    {
        var node = Take(key);
        if (node is null)
        {
            return null;
        }
        if (node is not YamlMappingNode map)
        {
            _ctx.Error(PathOf(key), node, $"expected a mapping of strings, found {Describe(node)}");
            return null;
        }
        var result = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var (k, v) in map.Children)
        {
            var name = (k as YamlScalarNode)?.Value ?? "";
            var value = IsNull(v) ? "" : Yaml.AsString(_ctx, v, FieldPath.Child(PathOf(key), name));
            if (value is not null)
            {
                result[name] = value;
            }
        }
        return result;
    }

    public static bool IsNull(YamlNode node) =>
        node is YamlScalarNode { Style: ScalarStyle.Plain, Value: null or "" or "~" or "null" or "Null" or "NULL" };

    public static string Describe(YamlNode node) => node switch
    {
        YamlMappingNode => "a mapping",
        YamlSequenceNode => "a list",
        YamlScalarNode s => $"\"{s.Value}\"",
        _ => "something else",
    };
}

internal static class Yaml
{
    public static string? AsString(ParseContext ctx, YamlNode node, string path)
    {
        if (node is YamlScalarNode s)
        {
            return s.Value ?? "";
        }
        ctx.Error(path, node, $"expected a string, found {MapReader.Describe(node)}");
        return null;
    }

    /// <summary>An integer, written as a number or a numeric string.</summary>
    public static bool TryInt(YamlNode node, out long value)
    {
        value = 0;
        return node is YamlScalarNode { Value: { } text }
            && long.TryParse(text, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out value);
    }

    public static int? IntInRange(ParseContext ctx, YamlNode? node, string path, long min, long max, string what)
    {
        if (node is null)
        {
            return null;
        }
        if (!TryInt(node, out var value))
        {
            ctx.Error(path, node, $"{MapReader.Describe(node)} is not a valid {what} (expected a number {min}-{max})");
            return null;
        }
        if (value < min || value > max)
        {
            ctx.Error(path, node, $"{value} is out of range for {what} ({min}-{max})");
            return null;
        }
        return (int)value;
    }
}
