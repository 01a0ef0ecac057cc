using Membrane.Policy.Labels;
using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Api;

/// <summary>Reads <c>matchLabels</c>/<c>matchExpressions</c> selectors with precise errors.</summary>
internal static class SelectorParser
{
    /// <param name="defaultSource">Source for keys without a prefix: <c>any</c> in Cilium selectors, <c>k8s</c> in KNP.</param>
    /// <param name="keyPrefix">Prepended to every key (KNP namespaceSelector maps to namespace labels).</param>
    public static LabelSelector? Parse(ParseContext ctx, YamlNode node, string path, string defaultSource, string keyPrefix = "")
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var errorsBefore = ctx.ErrorCount;
        var requirements = new List<SelectorRequirement>();
        if (map.StringMap("matchLabels") is { } labels)
        {
            foreach (var (key, value) in labels)
            {
                var keyPath = FieldPath.Child(map.PathOf("matchLabels"), key);
                if (Key(ctx, map.Node, keyPath, key, defaultSource, keyPrefix) is { } k)
                {
                    if (Names.CheckLabelValue(value) is { } error)
                    {
                        ctx.Error(keyPath, map.Node, error);
                    }
                    requirements.Add(new SelectorRequirement(k.Source, k.Key, SelectorOperator.In, [value]));
                }
            }
        }
        var expressions = map.List("matchExpressions", (item, itemPath) => Expression(ctx, item, itemPath, defaultSource, keyPrefix));
        if (expressions is not null)
        {
            requirements.AddRange(expressions);
        }
        map.Finish();
        return ctx.ErrorCount == errorsBefore ? new LabelSelector(requirements) : null;
    }

    private static (string Source, string Key)? Key(ParseContext ctx, YamlNode node, string path, string text, string defaultSource,
        string keyPrefix)
    {
        var (source, key) = LabelSource.Split(text, defaultSource);
        if (Names.CheckLabelKey(key) is { } error)
        {
            ctx.Error(path, node, error);
            return null;
        }
        return (source, keyPrefix + key);
    }

    private static SelectorRequirement? Expression(ParseContext ctx, YamlNode node, string path, string defaultSource, string keyPrefix)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var keyText = map.String("key", required: true);
        var opText = map.String("operator", required: true);
        var values = map.List("values", (v, p) => Yaml.AsString(ctx, v, p)) ?? [];
        map.Finish();
        if (keyText is null || opText is null)
        {
            return null;
        }
        var key = Key(ctx, node, map.PathOf("key"), keyText, defaultSource, keyPrefix);
        SelectorOperator? op = opText switch
        {
            "In" => SelectorOperator.In,
            "NotIn" => SelectorOperator.NotIn,
            "Exists" => SelectorOperator.Exists,
            "DoesNotExist" => SelectorOperator.DoesNotExist,
            _ => null,
        };
        if (op is null)
        {
            ctx.Error(map.PathOf("operator"), node, $"\"{opText}\" is not a valid operator (In, NotIn, Exists or DoesNotExist)");
            return null;
        }
        if (op is SelectorOperator.In or SelectorOperator.NotIn && values.Count == 0)
        {
            ctx.Error(map.PathOf("values"), node, $"operator {opText} needs at least one value");
            return null;
        }
        if (op is SelectorOperator.Exists or SelectorOperator.DoesNotExist && values.Count > 0)
        {
            ctx.Error(map.PathOf("values"), node, $"operator {opText} takes no values");
            return null;
        }
        return key is { } k ? new SelectorRequirement(k.Source, k.Key, op.Value, values) : null;
    }
}
