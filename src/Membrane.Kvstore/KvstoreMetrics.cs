using System.Diagnostics;
using System.Diagnostics.Metrics;

namespace Membrane.Kvstore;

/// <summary>
/// The store client's measurements, on a .NET meter (the agent listens to it and exports Prometheus metrics): every etcd
/// request by action and outcome with its duration, watch events received by prefix, and how long a watched change
/// took to be enforced.
/// </summary>
public static class KvstoreMetrics
{
    public const string MeterName = "membrane.kvstore";

    private static readonly Meter Meter = new(MeterName);

    private static readonly Histogram<double> Operations = Meter.CreateHistogram<double>("operations_duration",
        "s", "etcd requests by action (the request kind) and outcome (success, failure), with their duration");

    private static readonly Counter<long> Events = Meter.CreateCounter<long>("events",
        description: "Changes received from etcd watches, by watched prefix (scope) and action (put, delete, list)");

    private static readonly Histogram<double> WatchLag = Meter.CreateHistogram<double>("watch_lag",
        "s", "From receiving a watched change of the cluster's objects to having enforced it");

    /// <summary>One etcd request: <paramref name="action"/> is the request kind (put, range, txn, leasegrant…).</summary>
    public static void Operation(string action, bool success, TimeSpan duration) =>
        Operations.Record(duration.TotalSeconds, new KeyValuePair<string, object?>("action", action),
            new KeyValuePair<string, object?>("outcome", success ? "success" : "failure"));

    public static void Event(string scope, string action) =>
        Events.Add(1, new KeyValuePair<string, object?>("scope", scope), new KeyValuePair<string, object?>("action", action));

    /// <summary>A watched change received at <paramref name="received"/> (a <see cref="Stopwatch"/> timestamp) is enforced now.</summary>
    public static void Enforced(long received) => WatchLag.Record(Stopwatch.GetElapsedTime(received).TotalSeconds);
}
