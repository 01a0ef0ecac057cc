using System.Diagnostics;
using Membrane.Policy.Api;

namespace Membrane.Bench;

public sealed record ResolutionResult(double FullMilliseconds, double FullAllocatedMegabytes, double IncrementalMilliseconds,
    int Identities, int Entries);

/// <summary>The control-plane figures for the report: median wall time and allocation of full and incremental resolution.</summary>
public static class ResolutionTimings
{
    public static ResolutionResult Run(int fullRuns = 5, int incrementalRuns = 50)
    {
        var set = ResolutionWorkload.Build();
        var full = new List<double>();
        var allocated = new List<double>();
        var entries = 0;
        var identities = 0;
        for (var i = 0; i < fullRuns; i++)
        {
            GC.Collect();
            var bytes = GC.GetTotalAllocatedBytes(precise: true);
            var watch = Stopwatch.StartNew();
            var engine = ResolutionWorkload.Engine(set);
            entries = ResolutionWorkload.LocalEndpoints().Sum(k => engine.Resolve(k).State.Count);
            full.Add(watch.Elapsed.TotalMilliseconds);
            allocated.Add((GC.GetTotalAllocatedBytes(precise: true) - bytes) / 1048576.0);
            identities = engine.Identities.Count();
        }
        var live = ResolutionWorkload.Engine(set);
        live.ResolveDirty(); // the local endpoints, resolved and cached: later changes are incremental
        var extra = ResolutionWorkload.ExtraPolicy();
        var incremental = new List<double>();
        for (var i = 0; i < incrementalRuns; i++)
        {
            var watch = Stopwatch.StartNew();
            live.UpsertPolicy(extra);
            live.ResolveDirty();
            incremental.Add(watch.Elapsed.TotalMilliseconds);
            live.RemovePolicy(extra.Origin.ToString());
            live.ResolveDirty();
        }
        return new ResolutionResult(SandboxBenchmark.Median(full), SandboxBenchmark.Median(allocated),
            SandboxBenchmark.Median(incremental), identities, entries);
    }
}
