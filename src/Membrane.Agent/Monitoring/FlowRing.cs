using Membrane.Datapath.Maps;

namespace Membrane.Agent.Monitoring;

/// <summary>
/// The last <see cref="Capacity"/> datapath events (drops and new allowed connections) with the time they were read,
/// so flows can be asked for after the fact. Raw events are kept; they are described (pods, labels) when asked for.
/// Thread-safe.
/// </summary>
public sealed class FlowRing(int capacity)
{
    private readonly (DateTimeOffset Time, DatapathEvent Event)[] _items = new (DateTimeOffset, DatapathEvent)[capacity];
    private readonly Lock _gate = new();
    private long _written;

    public int Capacity => _items.Length;

    public void Add(DateTimeOffset time, DatapathEvent e)
    {
        lock (_gate)
        {
            _items[_written % _items.Length] = (time, e);
            _written++;
        }
    }

    /// <summary>The events kept, oldest first.</summary>
    public List<(DateTimeOffset Time, DatapathEvent Event)> Snapshot()
    {
        lock (_gate)
        {
            var count = (int)Math.Min(_written, _items.Length);
            var result = new List<(DateTimeOffset, DatapathEvent)>(count);
            for (var i = _written - count; i < _written; i++)
            {
                result.Add(_items[i % _items.Length]);
            }
            return result;
        }
    }
}
