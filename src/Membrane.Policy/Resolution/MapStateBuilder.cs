using Membrane.Policy.Rules;

namespace Membrane.Policy.Resolution;

/// <summary>Accumulates entries, then applies deny precedence so the longest match always carries the right verdict.</summary>
internal sealed class MapStateBuilder
{
    private const int MaxReferences = 8;
    private readonly Dictionary<PolicyKey, (RuleAction Verdict, List<string> From)> _entries = [];

    public void Add(PolicyKey key, RuleAction action, string reference)
    {
        if (_entries.TryGetValue(key, out var existing))
        {
            if (existing.Verdict == action)
            {
                if (existing.From.Count < MaxReferences && !existing.From.Contains(reference))
                {
                    existing.From.Add(reference);
                }
                return;
            }
            if (existing.Verdict == RuleAction.Deny)
            {
                return;
            }
        }
        _entries[key] = (action, [reference]);
    }

    public MapState Build()
    {
        // An allow entry covered by a deny entry of the same identity would otherwise win the longest-prefix
        // match (e.g. an L3-only deny and an L3+L4 allow); it becomes a deny carrying the deny's reasons.
        var denies = _entries.Where(e => e.Value.Verdict == RuleAction.Deny)
            .GroupBy(e => (e.Key.Direction, e.Key.Identity))
            .ToDictionary(g => g.Key, g => g.Select(e => e.Key).ToList());
        var result = new Dictionary<PolicyKey, PolicyEntry>(_entries.Count);
        foreach (var (key, (verdict, from)) in _entries)
        {
            if (verdict == RuleAction.Allow && denies.TryGetValue((key.Direction, key.Identity), out var candidates))
            {
                var cover = candidates.FindIndex(d => key.IsCoveredBy(d)) is var i and >= 0 ? candidates[i] : (PolicyKey?)null;
                if (cover is { } deny)
                {
                    var reasons = _entries[deny].From.Append($"(overrides allow by {string.Join("; ", from)})").ToList();
                    result[key] = new PolicyEntry(RuleAction.Deny, reasons);
                    continue;
                }
            }
            result[key] = new PolicyEntry(verdict, from);
        }
        return new MapState(result);
    }
}
