using System.Globalization;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using Membrane.Bench;

// membrane-bench datapath [repeat] [runs] [singles]   per-packet cost in the kernel (root)
// membrane-bench resolution                          control-plane resolution at scale (BenchmarkDotNet)
// membrane-bench cni [containers]                    CNI ADD/DEL latency through the plugin (root)
var what = args.Length > 0 ? args[0] : "datapath";
switch (what)
{
    case "datapath":
        var repeat = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1_000_000;
        var runs = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 9;
        var singles = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 200_000;
        Console.Write(DatapathBenchmark.Format(DatapathBenchmark.Run(repeat, runs, singles)));
        return 0;
    case "resolution":
        var config = DefaultConfig.Instance.AddJob(Job.ShortRun.WithWarmupCount(1).WithIterationCount(5))
            .WithOptions(ConfigOptions.DisableOptimizationsValidator);
        BenchmarkRunner.Run<ResolutionBenchmarks>(config);
        return 0;
    case "phases":
        // A quick look at where control-plane time goes, without BenchmarkDotNet's repetitions.
        var watch = System.Diagnostics.Stopwatch.StartNew();
        var set = ResolutionWorkload.Build();
        Console.WriteLine($"load YAML        {watch.ElapsedMilliseconds,6} ms");
        watch.Restart();
        var engine = ResolutionWorkload.Engine(set);
        Console.WriteLine($"build engine     {watch.ElapsedMilliseconds,6} ms ({engine.Identities.Count()} identities)");
        watch.Restart();
        var entries = ResolutionWorkload.LocalEndpoints().Sum(k => engine.Resolve(k).State.Count);
        Console.WriteLine($"resolve 100      {watch.ElapsedMilliseconds,6} ms ({entries} entries)");
        return 0;
    case "throughput":
        await using (var sandbox = await SandboxBenchmark.StartAsync())
        {
            // throughput [ROUNDS] [PINGS] [VARIANT…]: the variants whose names contain one of the words (all without any)
            var rounds = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 3;
            var pings = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : SandboxBenchmark.PingsPerRun;
            foreach (var t in await sandbox.ThroughputAsync(pings, rounds, args.Skip(3).ToArray()))
            {
                Console.WriteLine($"{t.Scenario,-46} {t.PingPerSecond,8:N0} {t.PingRatio,6:F3} ({t.PingInterval.Low:F3}–" +
                    $"{t.PingInterval.High:F3}) {t.TcpMegabytesPerSecond,7:N0} {t.TcpRatio,6:F3} " +
                    $"({t.TcpInterval.Low:F3}–{t.TcpInterval.High:F3})" +
                    (t.Programs is { } p ? $"  eBPF {p.Nanoseconds,5:F0} ns/round trip ({p.Runs:F1} runs)" : ""));
            }
        }
        return 0;
    case "cni":
        foreach (var c in await CniBenchmark.RunAsync(args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 50))
        {
            Console.WriteLine($"{c.Plugin,-20} ADD {c.AddP50,6:F1}/{c.AddP99,6:F1} ms  DEL {c.DelP50,6:F1}/{c.DelP99,6:F1} ms  agent ADD " +
                $"{c.AgentAddP50,6:F1}/{c.AgentAddP99,6:F1} DEL {c.AgentDelP50,6:F1}/{c.AgentDelP99,6:F1}  enforced {c.EnforcedAtReturn}");
        }
        return 0;
    case "cluster":
        Console.WriteLine(ClusterBenchmark.Format(await ClusterBenchmark.RunAsync()));
        return 0;
    case "cluster-throughput":
        // cluster-throughput native|tunnel [ROUNDS]
        foreach (var t in ClusterBenchmark.Throughput(args.Length > 1 ? args[1] : "tunnel",
            args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 5))
        {
            Console.WriteLine(t);
        }
        return 0;
    case "report":
        // report [--markdown FILE] [-o json]
        var report = await Report.RunAsync();
        var markdown = args.SkipWhile(a => a != "--markdown").Skip(1).FirstOrDefault();
        if (markdown is not null)
        {
            var text = Report.Markdown(report);
            await File.WriteAllTextAsync(markdown, text);
            Console.Error.WriteLine($"wrote {markdown}");
            // The README and docs quote the report's figures only between their markers, written here.
            var docs = Path.GetDirectoryName(Path.GetFullPath(markdown))!;
            var readme = Path.Combine(docs, "..", "README.md");
            var summary = GeneratedBlocks.ReplaceSummary(await File.ReadAllTextAsync(readme), Report.Headline(report));
            await File.WriteAllTextAsync(readme, summary);
            Console.Error.WriteLine($"wrote the summary in {Path.GetFullPath(readme)}");
            foreach (var doc in Directory.GetFiles(docs, "*.md").Where(f => Path.GetFullPath(f) != Path.GetFullPath(markdown)))
            {
                var before = await File.ReadAllTextAsync(doc);
                var after = GeneratedBlocks.ReplaceTables(before, text);
                if (after != before)
                {
                    await File.WriteAllTextAsync(doc, after);
                    Console.Error.WriteLine($"wrote the report's tables in {doc}");
                }
            }
        }
        Console.WriteLine(args.Contains("json") ? Report.Json(report) : Report.Markdown(report));
        return 0;
    default:
        Console.Error.WriteLine($"unknown benchmark \"{what}\" (datapath, resolution, phases or report)");
        return 2;
}
