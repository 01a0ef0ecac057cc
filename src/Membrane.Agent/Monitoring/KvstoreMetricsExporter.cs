using System.Diagnostics.Metrics;
using Membrane.Kvstore;
using Prometheus;

namespace Membrane.Agent.Monitoring;

/// <summary>
/// Listens to the store client's meter (<see cref="KvstoreMetrics"/>) and exports its measurements as Prometheus metrics
/// in the reference system's kvstore names: request durations by action and outcome, watch events, watch lag.
/// </summary>
public sealed class KvstoreMetricsExporter : IDisposable
{
    private static readonly double[] LatencyBuckets = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

    private readonly Histogram _operations = Metrics.CreateHistogram("membrane_kvstore_operations_duration_seconds",
        "Cluster mode: etcd requests by action (put, range, txn, deleterange, leasegrant…) and outcome, with their duration",
        new HistogramConfiguration { LabelNames = ["action", "outcome"], Buckets = LatencyBuckets });

    private readonly Counter _events = Metrics.CreateCounter("membrane_kvstore_events_total",
        "Cluster mode: changes received from etcd watches, by watched prefix (scope) and action (put, delete, list)", "scope", "action");

    private readonly Histogram _watchLag = Metrics.CreateHistogram("membrane_kvstore_watch_lag_seconds",
        "Cluster mode: from receiving a watched change of the cluster's objects to having enforced it",
        new HistogramConfiguration { Buckets = LatencyBuckets });

    private readonly MeterListener _listener = new();

    public KvstoreMetricsExporter()
    {
        _listener.InstrumentPublished = (instrument, listener) =>
        {
            if (instrument.Meter.Name == KvstoreMetrics.MeterName)
            {
                listener.EnableMeasurementEvents(instrument);
            }
        };
        _listener.SetMeasurementEventCallback<double>((instrument, value, tags, _) =>
        {
            if (instrument.Name == "operations_duration")
            {
                _operations.WithLabels(Tag(tags, "action"), Tag(tags, "outcome")).Observe(value);
            }
            else if (instrument.Name == "watch_lag")
            {
                _watchLag.Observe(value);
            }
        });
        _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
        {
            if (instrument.Name == "events")
            {
                _events.WithLabels(Tag(tags, "scope"), Tag(tags, "action")).Inc(value);
            }
        });
        _listener.Start();
    }

    private static string Tag(ReadOnlySpan<KeyValuePair<string, object?>> tags, string name)
    {
        foreach (var tag in tags)
        {
            if (tag.Key == name)
            {
                return tag.Value?.ToString() ?? "";
            }
        }
        return "";
    }

    public void Dispose() => _listener.Dispose();
}
