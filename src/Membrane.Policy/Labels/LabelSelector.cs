namespace Membrane.Policy.Labels;

public enum SelectorOperator
{
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// <summary>One requirement of a selector: a key (with source), an operator and values.</summary>
public sealed record SelectorRequirement(string Source, string Key, SelectorOperator Operator, IReadOnlyList<string> Values)
{
    public bool Matches(LabelSet labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        var present = labels.TryGet(Key, out var label) && (Source == LabelSource.Any || label.Source == Source);
        return Operator switch
        {
            SelectorOperator.In => present && Values.Contains(label.Value, StringComparer.Ordinal),
            SelectorOperator.NotIn => !present || !Values.Contains(label.Value, StringComparer.Ordinal),
            SelectorOperator.Exists => present,
            SelectorOperator.DoesNotExist => !present,
            _ => false,
        };
    }

    public override string ToString() => Operator switch
    {
        SelectorOperator.In when Values.Count == 1 => $"{Source}:{Key}={Values[0]}",
        SelectorOperator.In => $"{Source}:{Key} in ({string.Join(",", Values)})",
        SelectorOperator.NotIn => $"{Source}:{Key} notin ({string.Join(",", Values)})",
        SelectorOperator.Exists => $"{Source}:{Key}",
        _ => $"!{Source}:{Key}",
    };
}

/// <summary>
/// A label selector (matchLabels + matchExpressions, ANDed). An empty selector matches every label set.
/// The canonical text is the selector-cache key, so equal selectors share one cache entry.
/// </summary>
public sealed class LabelSelector : IEquatable<LabelSelector>
{
    public static LabelSelector All { get; } = new([]);

    public LabelSelector(IEnumerable<SelectorRequirement> requirements)
    {
        Requirements = requirements
            .Select(r => r with { Values = r.Values.Order(StringComparer.Ordinal).ToArray() })
            .OrderBy(r => r.Key, StringComparer.Ordinal).ThenBy(r => r.ToString(), StringComparer.Ordinal)
            .ToArray();
        Canonical = Requirements.Count == 0 ? "{}" : string.Join(", ", Requirements.Select(r => r.ToString()));
    }

    public IReadOnlyList<SelectorRequirement> Requirements { get; }

    public string Canonical { get; }

    public bool IsWildcard => Requirements.Count == 0;

    public bool Matches(LabelSet labels)
    {
        foreach (var requirement in Requirements)
        {
            if (!requirement.Matches(labels))
            {
                return false;
            }
        }
        return true;
    }

    /// <summary>True when some requirement constrains the namespace of the selected pods.</summary>
    public bool HasNamespaceRequirement => Requirements.Any(r => WellKnownLabels.IsNamespaceKey(r.Key));

    /// <summary>The single namespace this selector pins, if it has an equality requirement on it (used to index).</summary>
    public string? PinnedNamespace =>
        Requirements.FirstOrDefault(r => r.Key == WellKnownLabels.PodNamespace && r.Operator == SelectorOperator.In
            && r.Values.Count == 1)?.Values[0];

    public LabelSelector And(params SelectorRequirement[] more) => new(Requirements.Concat(more));

    public LabelSelector And(LabelSelector other)
    {
        ArgumentNullException.ThrowIfNull(other);
        return new(Requirements.Concat(other.Requirements));
    }

    public static SelectorRequirement Equal(string source, string key, string value) =>
        new(source, key, SelectorOperator.In, [value]);

    public bool Equals(LabelSelector? other) => other is not null && other.Canonical == Canonical;

    public override bool Equals(object? obj) => Equals(obj as LabelSelector);

    public override int GetHashCode() => StringComparer.Ordinal.GetHashCode(Canonical);

    public override string ToString() => Canonical;
}
