using System.CommandLine;
using System.Globalization;
using Membrane.Api;
using Membrane.Cli.Output;
using Membrane.Datapath.Ebpf;

namespace Membrane.Cli.Commands;

/// <summary><c>membrane bpf …</c>: the datapath's programs and maps.</summary>
public static class BpfCommands
{
    public const int VerifierLimit = 1_000_000;

    public static Command Create(CliOutput output)
    {
        var bpf = new Command("bpf", "Inspect the eBPF datapath");
        bpf.Subcommands.Add(Verify(output));
        bpf.Subcommands.Add(PolicyMap(output));
        bpf.Subcommands.Add(Conntrack(output));
        bpf.Subcommands.Add(IpCache(output));
        return bpf;
    }

    private static Command IpCache(CliOutput output)
    {
        var ipcache = new Command("ipcache", "The ipcache: address prefix to identity");
        var format = CliOutput.CreateFormatOption();
        var list = new Command("list", "Every prefix the datapath maps to an identity (any other address is world)") { format };
        list.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var result = await client.Get("v1/bpf/ipcache", AgentJsonContext.Default.ListIpCacheOutput).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(result, AgentJsonContext.Default.ListIpCacheOutput));
                return CliApp.Success;
            }
            Table.Write(output.Out, ["PREFIX", "IDENTITY", "NAME"], result.Select(e => (IReadOnlyList<string>)[e.Prefix, $"{e.Identity}",
                e.Name]));
            return CliApp.Success;
        });
        ipcache.Subcommands.Add(list);
        return ipcache;
    }

    private static Command PolicyMap(CliOutput output)
    {
        var policy = new Command("policy", "The policy map");
        var endpoint = new Argument<string>("endpoint") { Description = "Endpoint id or NAMESPACE/POD" };
        var format = CliOutput.CreateFormatOption();
        var get = new Command("get", "One row per map entry of an endpoint, with counters") { endpoint, format };
        get.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var result = await client.Get($"v1/bpf/policy?endpoint={Uri.EscapeDataString(parse.GetValue(endpoint)!)}",
                AgentJsonContext.Default.BpfPolicyOutput).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(result, AgentJsonContext.Default.BpfPolicyOutput));
                return CliApp.Success;
            }
            output.Out.WriteLine($"Endpoint {result.Endpoint} ({result.Pod}): {result.Entries.Count} entries");
            Table.Write(output.Out, ["DIRECTION", "IDENTITY", "LABELS", "PORT/PROTO", "VERDICT", "MATCH", "PACKETS", "BYTES",
                "DERIVED FROM"],
                result.Entries.Select(e => (IReadOnlyList<string>)[e.Direction, e.Identity == 0 ? "ANY" : $"{e.Identity}", e.Labels,
                    e.PortProtocol,
                    e.Verdict, e.MatchKind, $"{e.Packets}", $"{e.Bytes}", e.DerivedFrom]));
            return CliApp.Success;
        });
        policy.Subcommands.Add(get);
        return policy;
    }

    private static Command Conntrack(CliOutput output)
    {
        var ct = new Command("ct", "The connection-tracking table");
        var endpoint = new Option<string?>("--endpoint") { Description = "Only this endpoint (id or NAMESPACE/POD)" };
        var format = CliOutput.CreateFormatOption();
        string Query(ParseResult parse) => parse.GetValue(endpoint) is { } e ? $"v1/bpf/ct?endpoint={Uri.EscapeDataString(e)}"
            : "v1/bpf/ct";

        var list = new Command("list", "List tracked connections") { endpoint, format };
        list.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var result = await client.Get(Query(parse), AgentJsonContext.Default.ListConntrackOutput).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(result, AgentJsonContext.Default.ListConntrackOutput));
                return CliApp.Success;
            }
            Table.Write(output.Out, ["ENDPOINT", "PROTO", "OPENED", "SOURCE", "DESTINATION", "AGE s", "IDLE s", "PACKETS", "BYTES",
                "FLAGS"],
                result.Select(c => (IReadOnlyList<string>)[c.Endpoint, c.Protocol, c.Direction, c.Source, c.Destination,
                    c.AgeSeconds?.ToString(CultureInfo.InvariantCulture) ?? "-", c.IdleSeconds?.ToString(CultureInfo.InvariantCulture)
                    ?? "-", $"{c.Packets}", $"{c.Bytes}", c.Flags]));
            return CliApp.Success;
        });
        ct.Subcommands.Add(list);

        var usage = new Command("usage", "Each endpoint's use of its own conntrack tables (a flood fills only the sender's)")
        {
            endpoint, format,
        };
        usage.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var path = parse.GetValue(endpoint) is { } e ? $"v1/bpf/ct/usage?endpoint={Uri.EscapeDataString(e)}" : "v1/bpf/ct/usage";
            var result = await client.Get(path, AgentJsonContext.Default.ListConntrackUsageOutput).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(result, AgentJsonContext.Default.ListConntrackUsageOutput));
                return CliApp.Success;
            }
            string[] headers = ["ENDPOINT", "IPV4", "IPV6", "CAPACITY", "FULL %", "MEMORY KIB"];
            Table.Write(output.Out, headers, result.Select(u => (IReadOnlyList<string>)[
                u.Endpoint, $"{u.IPv4}", $"{u.IPv6}", $"{u.Capacity}", u.PercentFull.ToString(CultureInfo.InvariantCulture),
                (u.MemoryBytes / 1024).ToString(CultureInfo.InvariantCulture)]));
            return CliApp.Success;
        });
        ct.Subcommands.Add(usage);

        var flush = new Command("flush",
            "Forget tracked connections (all, or one endpoint's): their next packets meet policy as new ones") { endpoint, format };
        flush.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var result = await client.Delete(Query(parse), AgentJsonContext.Default.ConntrackFlushOutput).ConfigureAwait(false);
            output.Out.WriteLine(parse.GetValue(format) == "json"
                ? System.Text.Json.JsonSerializer.Serialize(result, AgentJsonContext.Default.ConntrackFlushOutput)
                : $"removed {result.Removed} tracked connection{(result.Removed == 1 ? "" : "s")}");
            return CliApp.Success;
        });
        ct.Subcommands.Add(flush);
        return ct;
    }

    private static Command Verify(CliOutput output)
    {
        var format = CliOutput.CreateFormatOption();
        var command = new Command("verify",
            "Load every program on this kernel and report the verifier's figures (needs root, no agent)") { format };
        command.SetAction(parse =>
        {
            var rows = new List<VerifyProgramOutput>();
            foreach (var file in Directory.GetFiles(BpfObject.ObjectDirectory, "*.o").Order(StringComparer.Ordinal))
            {
                BpfObject obj;
                try
                {
                    obj = BpfObject.Load(file);
                }
                catch (BpfException e)
                {
                    output.Err.WriteLine($"error: {e.Message}");
                    if (e.VerifierLog is { Length: > 0 } log)
                    {
                        output.Err.WriteLine(log);
                    }
                    return CliApp.Failure;
                }
                using (obj)
                {
                    rows.AddRange(obj.Programs.Values.OrderBy(p => p.Name, StringComparer.Ordinal).Select(p => new VerifyProgramOutput(
                        Path.GetFileName(file), p.Name, p.Stats.ProcessedInstructions, p.Stats.Instructions, p.Stats.PeakStates,
                        Math.Round(p.Stats.LoadTime.TotalMilliseconds, 2))));
                }
            }
            var kernel = File.Exists("/proc/sys/kernel/osrelease") ? File.ReadAllText("/proc/sys/kernel/osrelease").Trim() : "unknown";
            var total = rows.Sum(r => r.ProcessedInstructions);
            var attachment = DeviceHooks.Describe(DeviceHooks.Probe());
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(Json.Write(new VerifyOutput(kernel, rows, total, VerifierLimit, attachment),
                    CliJsonContext.Default.VerifyOutput));
                return CliApp.Success;
            }
            output.Out.WriteLine($"kernel {kernel}; verifier limit {VerifierLimit:N0} processed instructions per program; programs " +
                $"attach with {(attachment == "tcx" ? "tcx links (the kernel has them)" : "clsact filters (no tcx links: kernel < 6.6)")}");
            var objectWidth = rows.Select(r => r.ObjectFile.Length).Append("OBJECT".Length).Max();
            var programWidth = rows.Select(r => r.Program.Length).Append("PROGRAM".Length).Max();
            output.Out.WriteLine($"{"OBJECT".PadRight(objectWidth)}  {"PROGRAM".PadRight(programWidth)} {"PROCESSED",10} {"% LIMIT",8} " +
                $"{"INSNS",7} {"PEAK STATES",12} {"LOAD ms",8}");
            foreach (var r in rows)
            {
                output.Out.WriteLine($"{r.ObjectFile.PadRight(objectWidth)}  {r.Program.PadRight(programWidth)} " +
                    $"{r.ProcessedInstructions,10:N0} {100.0 * r.ProcessedInstructions / VerifierLimit,7:F2}% {r.Instructions,7:N0} " +
                    $"{r.PeakStates,12:N0} {r.LoadMilliseconds,8:F1}");
            }
            output.Out.WriteLine($"{"total".PadRight(objectWidth + 2 + programWidth)} {total,10:N0}");
            return CliApp.Success;
        });
        return command;
    }
}
