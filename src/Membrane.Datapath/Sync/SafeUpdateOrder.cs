namespace Membrane.Datapath.Sync;

/// <summary>One step of an update plan: write <see cref="Value"/> at <see cref="Key"/>, or delete the key.</summary>
public readonly record struct UpdateStep<TKey, TValue>(TKey Key, TValue Value, bool Delete);

/// <summary>
/// Orders the writes that turn one policy map into another so that no intermediate state allows a packet that
/// both the old and the new map deny: (1) new and changed deny entries, (2) deletion of allow entries that are
/// gone, (3) new and changed allow entries, (4) deletion of deny entries that are gone. Adding denies and
/// removing allows only narrows; new allows arrive when every new deny is already in place; old denies leave last.
/// </summary>
public static class SafeUpdateOrder
{
    public static List<UpdateStep<TKey, TValue>> Plan<TKey, TValue>(
        IReadOnlyDictionary<TKey, TValue> current,
        IReadOnlyDictionary<TKey, TValue> desired,
        Func<TValue, bool> isDeny,
        Func<TValue, TValue, bool> equivalent)
        where TKey : notnull
    {
        ArgumentNullException.ThrowIfNull(current);
        ArgumentNullException.ThrowIfNull(desired);
        ArgumentNullException.ThrowIfNull(isDeny);
        ArgumentNullException.ThrowIfNull(equivalent);
        var steps = new List<UpdateStep<TKey, TValue>>();
        void Writes(bool deny)
        {
            foreach (var (key, value) in desired)
            {
                if (isDeny(value) == deny && !(current.TryGetValue(key, out var old) && equivalent(old, value)))
                {
                    steps.Add(new(key, value, false));
                }
            }
        }
        void Deletes(bool deny)
        {
            foreach (var (key, value) in current)
            {
                if (isDeny(value) == deny && !desired.ContainsKey(key))
                {
                    steps.Add(new(key, value, true));
                }
            }
        }
        Writes(deny: true);
        Deletes(deny: false);
        Writes(deny: false);
        Deletes(deny: true);
        return steps;
    }
}
