using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Tests;

/// <summary>Every program loads with every feature compiled in, far below the verifier's limits.</summary>
public sealed class VerifierTests
{
    public const int LargestProgramBudget = 12_000; // issue 25: host routing compiled in, everything else too
    public const int AllProgramsBudget = 50_000;

    [Fact]
    public void ProgramsStayWithinTheComplexityBudget()
    {
        using var datapath = PolicyDatapath.Load();
        var stats = datapath.Bpf.Programs.Values.Select(p => p.Stats).ToList();
        Assert.Equal(["from_pod", "from_underlay", "to_pod", "to_tunnel"], stats.Select(s => s.Program).Order());
        foreach (var s in stats)
        {
            Assert.True(s.ProcessedInstructions > 0, $"{s.Program}: no statistics in the verifier log");
            Assert.True(s.ProcessedInstructions <= LargestProgramBudget, $"{s.Program} processed {s.ProcessedInstructions} instructions");
        }
        Assert.True(stats.Sum(s => s.ProcessedInstructions) <= AllProgramsBudget);
    }

    /// <summary>
    /// The figures docs/datapath.md and docs/cli.md show for `membrane bpf verify` are this build's: a change to the C that moves a
    /// program's count updates the doc with it (the verifier is deterministic for one kernel and compiler).
    /// </summary>
    [Fact]
    public void TheDatapathDocShowsThisBuildsVerifierFigures()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Membrane.slnx")))
        {
            dir = dir.Parent;
        }
        using var datapath = PolicyDatapath.Load();
        var measured = datapath.Bpf.Programs.Values.ToDictionary(p => p.Name, p => p.Stats.ProcessedInstructions);
        foreach (var name in new[] { "datapath.md", "cli.md" })
        {
            var documented = File.ReadAllLines(Path.Combine(dir!.FullName, "docs", name))
                .Where(l => l.StartsWith("membrane.o ", StringComparison.Ordinal))
                .Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
                .ToDictionary(f => f[1], f => int.Parse(f[2], System.Globalization.NumberStyles.AllowThousands,
                    System.Globalization.CultureInfo.InvariantCulture));
            Assert.Equal(measured.OrderBy(p => p.Key), documented.OrderBy(p => p.Key));
        }
    }

    /// <summary>
    /// A map helper call that the verifier cannot bind to a single map stays a generic helper call (an indirect
    /// call on every packet) instead of an inlined lookup or a direct call of the map's function. The translated
    /// program, as the kernel runs it, must contain none.
    /// </summary>
    [Fact]
    public void EveryMapCallIsBoundToOneMap()
    {
        using var datapath = PolicyDatapath.Load();
        foreach (var program in new[] { datapath.FromPod, datapath.ToPod, datapath.FromUnderlay, datapath.ToTunnel })
        {
            var psi = new System.Diagnostics.ProcessStartInfo("bpftool", ["prog", "dump", "xlated", "id",
                program.Id.ToString(System.Globalization.CultureInfo.InvariantCulture)])
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
            };
            using var bpftool = System.Diagnostics.Process.Start(psi)!;
            var xlated = bpftool.StandardOutput.ReadToEnd();
            var error = bpftool.StandardError.ReadToEnd();
            bpftool.WaitForExit();
            Assert.True(bpftool.ExitCode == 0, $"bpftool failed: {error}");
            var calls = System.Text.RegularExpressions.Regex.Matches(xlated, @"call ([a-z_0-9]+)").Select(m => m.Groups[1].Value).ToList();
            if (program != datapath.ToTunnel)
            {
                Assert.Contains("__htab_map_lookup_elem", calls); // conntrack and known nodes: lookups inlined
            }
            Assert.Contains("trie_lookup_elem", calls); // ipcache and policy: direct calls
            var generic = calls.Where(c => c is "bpf_map_lookup_elem" or "bpf_map_update_elem" or "bpf_map_delete_elem").ToList();
            Assert.True(generic.Count == 0,
                $"{program.Name}: {generic.Count} map calls not bound to one map ({string.Join(", ", generic.Distinct())})");
        }
    }

    [Fact]
    public void AMissingObjectIsAClearError()
    {
        var file = Path.Combine(Path.GetTempPath(), $"membrane-missing-{Guid.NewGuid():N}.o");
        var e = Assert.Throws<BpfException>(() => BpfObject.Load(file));
        Assert.Contains("not found", e.Message, StringComparison.Ordinal);
    }

    [Fact]
    public void ARejectedProgramCarriesTheVerifierLog()
    {
        // A program that reads past its packet without a bounds check: the verifier must refuse it.
        var dir = Directory.CreateTempSubdirectory();
        try
        {
            var source = Path.Combine(dir.FullName, "bad.c");
            File.WriteAllText(source, """
                #include <linux/bpf.h>
                #include <bpf/bpf_helpers.h>
                SEC("tc")
                int unchecked(struct __sk_buff *skb)
                {
                    unsigned char *data = (unsigned char *)(long)skb->data;
                    return data[40];
                }
                char LICENSE[] SEC("license") = "GPL";
                """);
            var obj = Path.Combine(dir.FullName, "bad.o");
            using (var clang = System.Diagnostics.Process.Start("clang-14", ["-O2", "-g", "-target", "bpf",
                "-I/usr/include/x86_64-linux-gnu", "-c", source, "-o", obj])!)
            {
                clang.WaitForExit();
                Assert.Equal(0, clang.ExitCode);
            }
            var e = Assert.Throws<BpfException>(() => BpfObject.Load(obj));
            Assert.Equal(13, e.Errno); // EACCES: rejected by the verifier
            Assert.Contains("invalid access to packet", e.VerifierLog, StringComparison.Ordinal);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }
}
