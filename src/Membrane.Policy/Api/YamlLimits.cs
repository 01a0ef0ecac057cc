using YamlDotNet.Core;
using YamlDotNet.Core.Events;

namespace Membrane.Policy.Api;

/// <summary>
/// Bounds on what one YAML text may cost before it is loaded into nodes. The loader follows aliases as shared
/// nodes, so a self-referencing alias makes a cycle and a few aliased lists ("billion laughs") expand to billions of
/// nodes; deep nesting exhausts the stack. One streaming pass over the parser's events, which keeps no nodes, checks
/// them all first.
/// </summary>
public static class YamlLimits
{
    /// <summary>Largest YAML text accepted in one file or request (characters).</summary>
    public const int MaxTextLength = 8 * 1024 * 1024;

    /// <summary>Deepest nesting of mappings and sequences (a policy needs about ten).</summary>
    public const int MaxDepth = 64;

    /// <summary>Most nodes a text may stand for once every alias is expanded.</summary>
    public const long MaxExpandedNodes = 1_000_000;

    /// <summary>Largest object, as the YAML the agent stores for it (the reference store's limit is 1.5 MiB).</summary>
    public const int MaxObjectLength = 1024 * 1024;

    /// <summary>Largest total of one object's annotation keys and values (as Kubernetes limits them).</summary>
    public const int MaxAnnotationBytes = 256 * 1024;

    /// <summary>Null when the text is within every bound, else what is wrong, with its position.</summary>
    public static PolicyError? Check(string text, string file)
    {
        ArgumentNullException.ThrowIfNull(text);
        if (text.Length > MaxTextLength)
        {
            return new PolicyError(file, "", "",
                $"{text.Length:N0} characters is more than the {MaxTextLength:N0} a file or request may have", 0, 0);
        }
        try
        {
            return Scan(text, file);
        }
        catch (Exception e) when (e is YamlException or InvalidOperationException or ArgumentException)
        {
            return null; // malformed: loading reports it with its position (YamlDotNet's scanner throws either)
        }
    }

    private static PolicyError? Scan(string text, string file)
    {
        var parser = new Parser(new StringReader(text));
        var open = new List<(string? Anchor, long Nodes)>();
        var anchors = new Dictionary<string, long>(StringComparer.Ordinal);
        long total = 0;
        while (parser.MoveNext())
        {
            var current = parser.Current!;
            long nodes;
            switch (current)
            {
                case DocumentStart:
                    anchors.Clear(); // anchors are scoped to their document
                    continue;
                case MappingStart or SequenceStart:
                    if (open.Count >= MaxDepth)
                    {
                        return Error(file, current, $"nesting deeper than {MaxDepth} levels");
                    }
                    var anchor = ((NodeEvent)current).Anchor;
                    open.Add((anchor.IsEmpty ? null : anchor.Value, 0));
                    continue;
                case MappingEnd or SequenceEnd:
                    var (name, inner) = open[^1];
                    open.RemoveAt(open.Count - 1);
                    nodes = inner + 1;
                    if (name is not null)
                    {
                        anchors[name] = nodes;
                    }
                    break;
                case Scalar scalar:
                    nodes = 1;
                    if (!scalar.Anchor.IsEmpty)
                    {
                        anchors[scalar.Anchor.Value] = 1;
                    }
                    total += 1;
                    break;
                case AnchorAlias alias:
                    if (open.Any(o => o.Anchor == alias.Value.Value))
                    {
                        return Error(file, current, $"alias *{alias.Value.Value} refers to a node that contains it (a cycle)");
                    }
                    nodes = anchors.GetValueOrDefault(alias.Value.Value, 1);
                    total += nodes;
                    break;
                default:
                    continue;
            }
            if (open.Count > 0)
            {
                open[^1] = (open[^1].Anchor, open[^1].Nodes + nodes);
            }
            if (total > MaxExpandedNodes)
            {
                return Error(file, current, $"the text stands for more than {MaxExpandedNodes:N0} nodes once its aliases are expanded");
            }
        }
        return null;
    }

    private static PolicyError Error(string file, ParsingEvent at, string message) =>
        new(file, "", "", $"{message} (line {at.Start.Line}, column {at.Start.Column}); nothing was loaded", (int)at.Start.Line,
            (int)at.Start.Column);
}
