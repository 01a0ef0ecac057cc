using BenchmarkDotNet.Attributes;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Bench;

/// <summary>Control-plane cost at scale: full resolution and one incremental change.</summary>
[MemoryDiagnoser]
public class ResolutionBenchmarks
{
    private ManifestSet _set = ManifestSet.Empty;
    private PolicyEngine _engine = new();
    private PolicyDocument _extra = null!;
    private IReadOnlyList<string> _local = [];

    [GlobalSetup]
    public void Setup()
    {
        _set = ResolutionWorkload.Build();
        _local = ResolutionWorkload.LocalEndpoints();
        _engine = ResolutionWorkload.Engine(_set);
        _engine.ResolveDirty(); // the local endpoints, resolved and cached: later changes are incremental
        _extra = ResolutionWorkload.ExtraPolicy();
    }

    /// <summary>Baseline for the ratio: loading the policies and workloads into a fresh engine (no resolution).</summary>
    [Benchmark(Baseline = true)]
    public PolicyEngine BuildEngine() => ResolutionWorkload.Engine(_set);

    /// <summary>A fresh engine resolving the 100 local endpoints from scratch.</summary>
    [Benchmark]
    public int FullResolution()
    {
        var engine = ResolutionWorkload.Engine(_set);
        var entries = 0;
        foreach (var e in _local)
        {
            entries += engine.Resolve(e).State.Count;
        }
        return entries;
    }

    /// <summary>One policy added and the 5 local endpoints it selects re-resolved (then removed, likewise).</summary>
    [Benchmark]
    public int IncrementalPolicyChange()
    {
        _engine.UpsertPolicy(_extra);
        var changed = _engine.ResolveDirty().Count;
        _engine.RemovePolicy(_extra.Origin.ToString());
        changed += _engine.ResolveDirty().Count;
        return changed == 10 ? changed : throw new InvalidOperationException($"expected 10 re-resolutions, got {changed}");
    }
}
