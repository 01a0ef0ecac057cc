namespace Membrane.Policy.Labels;

/// <summary>An immutable set of labels, one per key, with a canonical text form used as the identity key.</summary>
public sealed class LabelSet : IEquatable<LabelSet>
{
    private readonly Dictionary<string, Label> _byKey;

    public static LabelSet Empty { get; } = new([]);

    public LabelSet(IEnumerable<Label> labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        _byKey = new Dictionary<string, Label>(StringComparer.Ordinal);
        foreach (var label in labels)
        {
            _byKey[label.Key] = label;
        }
        Canonical = string.Join(",", _byKey.Values.Select(l => l.ToString()).Order(StringComparer.Ordinal));
    }

    /// <summary>Sorted <c>source:key=value</c> list; equal sets have equal text.</summary>
    public string Canonical { get; }

    public int Count => _byKey.Count;

    public IEnumerable<Label> Labels => _byKey.Values.OrderBy(l => l.Key, StringComparer.Ordinal);

    public bool TryGet(string key, out Label label) => _byKey.TryGetValue(key, out label);

    public bool Has(string source, string key) =>
        _byKey.TryGetValue(key, out var l) && (source == LabelSource.Any || l.Source == source);

    public string? ValueOf(string key) => _byKey.TryGetValue(key, out var l) ? l.Value : null;

    /// <summary>Parses <c>k8s:app=web,env=prod</c> (source defaults to k8s).</summary>
    public static LabelSet Parse(string text)
    {
        ArgumentNullException.ThrowIfNull(text);
        var labels = new List<Label>();
        foreach (var part in text.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            var eq = part.IndexOf('=', StringComparison.Ordinal);
            var keyPart = eq < 0 ? part : part[..eq];
            var value = eq < 0 ? "" : part[(eq + 1)..];
            var (source, key) = LabelSource.Split(keyPart, LabelSource.Kubernetes);
            labels.Add(new Label(source, key, value));
        }
        return new LabelSet(labels);
    }

    public bool Equals(LabelSet? other) => other is not null && other.Canonical == Canonical;

    public override bool Equals(object? obj) => Equals(obj as LabelSet);

    public override int GetHashCode() => StringComparer.Ordinal.GetHashCode(Canonical);

    public override string ToString() => Canonical;
}
