using System.Globalization;
using BenchmarkDotNet.Configs;
using BenchmarkDotNet.Jobs;
using BenchmarkDotNet.Running;
using Membrane.Bench;

// membrane-bench datapath [repeat] [runs] [singles]   per-packet cost in the kernel (root)
// membrane-bench resolution                          control-plane resolution at scale (BenchmarkDotNet)
var what = args.Length > 0 ? args[0] : "datapath";
switch (what)
{
    case "datapath":
        var repeat = args.Length > 1 ? int.Parse(args[1], CultureInfo.InvariantCulture) : 1_000_000;
        var runs = args.Length > 2 ? int.Parse(args[2], CultureInfo.InvariantCulture) : 5;
        var singles = args.Length > 3 ? int.Parse(args[3], CultureInfo.InvariantCulture) : 200_000;
        Console.Write(DatapathBenchmark.Format(DatapathBenchmark.Run(repeat, runs, singles)));
        return 0;
    case "resolution":
        var config = DefaultConfig.Instance.AddJob(Job.ShortRun.WithWarmupCount(1).WithIterationCount(5)).WithOptions(ConfigOptions.DisableOptimizationsValidator);
        BenchmarkRunner.Run<ResolutionBenchmarks>(config);
        return 0;
    default:
        Console.Error.WriteLine($"unknown benchmark \"{what}\" (datapath or resolution)");
        return 2;
}
