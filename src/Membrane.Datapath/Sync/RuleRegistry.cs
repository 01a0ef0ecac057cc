namespace Membrane.Datapath.Sync;

/// <summary>
/// Interns the "derived from" text of policy entries into small numbers the datapath carries in its values and
/// events, so a drop event can name the rule that denied it.
/// </summary>
public sealed class RuleRegistry
{
    private readonly Dictionary<string, uint> _ids = new(StringComparer.Ordinal);
    private readonly List<string> _texts = [""];
    private readonly Lock _gate = new();

    public uint Intern(IReadOnlyList<string> derivedFrom)
    {
        var text = string.Join("; ", derivedFrom);
        lock (_gate)
        {
            if (!_ids.TryGetValue(text, out var id))
            {
                id = (uint)_texts.Count;
                _texts.Add(text);
                _ids[text] = id;
            }
            return id;
        }
    }

    public string Describe(uint id)
    {
        lock (_gate)
        {
            return id < _texts.Count ? _texts[(int)id] : $"rule #{id}";
        }
    }
}
