using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Tests;

/// <summary>Every program loads with every feature compiled in, far below the verifier's limits.</summary>
public sealed class VerifierTests
{
    public const int LargestProgramBudget = 15_000;
    public const int AllProgramsBudget = 50_000;

    [Fact]
    public void ProgramsStayWithinTheComplexityBudget()
    {
        using var datapath = PolicyDatapath.Load();
        var stats = datapath.Bpf.Programs.Values.Select(p => p.Stats).ToList();
        Assert.Equal(["from_pod", "to_pod"], stats.Select(s => s.Program).Order());
        foreach (var s in stats)
        {
            Assert.True(s.ProcessedInstructions > 0, $"{s.Program}: no statistics in the verifier log");
            Assert.True(s.ProcessedInstructions <= LargestProgramBudget, $"{s.Program} processed {s.ProcessedInstructions} instructions");
        }
        Assert.True(stats.Sum(s => s.ProcessedInstructions) <= AllProgramsBudget);
    }

    [Fact]
    public void ARejectedProgramCarriesTheVerifierLog()
    {
        var file = Path.Combine(Path.GetTempPath(), $"membrane-missing-{Guid.NewGuid():N}.o");
        var e = Assert.Throws<BpfException>(() => BpfObject.Load(file));
        Assert.Contains("not found", e.Message, StringComparison.Ordinal);
    }
}
