using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Cli.Commands;

/// <summary>
/// <c>membrane observe</c>: the agent's recent flows (its flow ring) with the reference system's flow-tool filters,
/// after the fact or followed; <c>-o json</c> prints one flow per line in that tool's JSON field names.
/// </summary>
public static class ObserveCommands
{
    /// <summary>One flow per line, as the reference system's flow tool prints JSON.</summary>
    private static readonly AgentJsonContext OneLine = new(new JsonSerializerOptions(AgentJsonContext.Default.Options)
    {
        WriteIndented = false,
    });

    public static Command Create(CliOutput output)
    {
        // --from and --to as in probe and trace; --from-pod and --to-pod as in the reference system's observe.
        var fromPod = new Option<string?>("--from", "--from-pod") { Description = "Flows from this pod (NAMESPACE/POD)" };
        var toPod = new Option<string?>("--to", "--to-pod") { Description = "Flows to this pod (NAMESPACE/POD)" };
        var ns = new Option<string?>("--namespace") { Description = "Flows from or to pods of this namespace" };
        var verdict = new Option<string?>("--verdict") { Description = "dropped, forwarded or audit (let through by audit mode)" };
        verdict.OneOf("dropped", "forwarded", "audit");
        var protocol = new Option<string?>("--protocol") { Description = "tcp, udp, sctp, icmp or icmpv6" };
        protocol.OneOf("tcp", "udp", "sctp", "icmp", "icmpv6");
        var icmpType = new Option<string?>("--icmp-type")
        {
            Description = "ICMP or ICMPv6 type, by number or name (EchoRequest; the family from --protocol, IPv4 without it)",
        };
        var port = new Option<int?>("--port") { Description = "Source or destination port" };
        var since = new Option<string?>("--since") { Description = "Only flows of the last DURATION (30s, 5m, 1h)" };
        var last = new Option<int?>("--last") { Description = "Only the last N matching flows" };
        // No -f: across the CLI, -f is a file (apply -f).
        var follow = new Option<bool>("--follow") { Description = "Keep printing new flows as they come" };
        var format = CliOutput.CreateFormatOption();
        var command = new Command("observe", "Recent flows the datapath dropped or allowed (the agent's flow ring), with filters")
        {
            fromPod, toPod, ns, verdict, protocol, icmpType, port, since, last, follow, format,
        };
        command.SetAction(async (parse, cancel) =>
        {
            var window = parse.GetValue(since) is { } text ? Duration(text) : (TimeSpan?)null;
            var filter = new FlowFilter(parse.GetValue(fromPod), parse.GetValue(toPod), parse.GetValue(ns),
                parse.GetValue(verdict)?.ToUpperInvariant(),
                parse.GetValue(protocol), IcmpType(parse.GetValue(icmpType), parse.GetValue(protocol)), parse.GetValue(port), window);
            bool Matches(Flow f) => filter.Matches(f, DateTimeOffset.UtcNow);
            var json = parse.GetValue(format) == "json";
            using var client = AgentClient.FromEnvironment();
            var result = await client.Get("v1/flows", AgentJsonContext.Default.FlowsResponse).ConfigureAwait(false);
            var shown = result.Flows.Where(Matches).ToList();
            if (parse.GetValue(last) is { } count)
            {
                shown = shown.TakeLast(Math.Max(count, 0)).ToList();
            }
            if (!json)
            {
                output.Out.WriteLine($"# {result.Flows.Count} flows in the ring (capacity {result.Capacity}); " +
                    $"{result.EventsLost} events lost by the kernel since the agent started");
            }
            Print(shown, json, output);
            var seen = result.Flows.Count == 0 ? DateTimeOffset.MinValue : result.Flows[^1].Time;
            while (parse.GetValue(follow) && !cancel.IsCancellationRequested)
            {
                try
                {
                    await Task.Delay(500, cancel).ConfigureAwait(false);
                }
                catch (OperationCanceledException)
                {
                    break;
                }
                var next = await client.Get("v1/flows", AgentJsonContext.Default.FlowsResponse).ConfigureAwait(false);
                Print(next.Flows.Where(f => f.Time > seen).Where(Matches).ToList(), json, output);
                seen = next.Flows.Count == 0 ? seen : next.Flows[^1].Time;
            }
            return CliApp.Success;
        });
        return command;
    }

    private static void Print(IEnumerable<Flow> flows, bool json, CliOutput output)
    {
        foreach (var f in flows)
        {
            if (json)
            {
                output.Out.WriteLine(JsonSerializer.Serialize(f, OneLine.Flow));
                continue;
            }
            var details = (f.L4.IcmpV4 ?? f.L4.IcmpV6) is { } icmp ? $"{Protocol(f)} type {icmp.Type} code {icmp.Code}"
                : Ports(f) is { } p ? $"{Protocol(f)} {p.SourcePort} -> {p.DestinationPort}" : Protocol(f);
            output.Out.WriteLine($"{f.Time.ToString("HH:mm:ss.fff", CultureInfo.InvariantCulture)}  {f.Verdict,-9}  " +
                $"{Name(f.Source, f.Ip.Source)} -> {Name(f.Destination, f.Ip.Destination)}  {f.TrafficDirection.ToLowerInvariant()}  " +
                $"{details}{(f.DropReasonDesc is { } reason ? $"  ({reason})" : "")}");
        }
    }

    private static string? Pod(FlowEndpoint e) => FlowFilter.PodOf(e);

    private static string Name(FlowEndpoint e, string address) => Pod(e) is { } pod ? $"{pod} ({address})"
        : $"{address} (identity {e.Identity})";

    private static FlowPorts? Ports(Flow f) => FlowFilter.PortsOf(f);

    private static string Protocol(Flow f) => FlowFilter.ProtocolOf(f);

    private static TimeSpan Duration(string text) =>
        Durations.Parse(text, "--since", TimeSpan.MaxValue, "30s, 5m, 1h") is { Ticks: > 0 } window ? window
            : throw new CliException($"--since \"{text}\" is not a duration (30s, 5m, 1h)");

    /// <summary>An ICMP type by number or name, in the family --protocol names (icmpv6: IPv6; otherwise IPv4).</summary>
    private static int? IcmpType(string? text, string? protocol)
    {
        if (text is null)
        {
            return null;
        }
        var family = string.Equals(protocol, "icmpv6", StringComparison.OrdinalIgnoreCase) ? Policy.Rules.IcmpFamily.IPv6
            : Policy.Rules.IcmpFamily.IPv4;
        if (byte.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var number))
        {
            return number;
        }
        var v6 = family == Policy.Rules.IcmpFamily.IPv6 ? "v6" : "";
        return Policy.Rules.IcmpTypes.TryParse(family, text, out var type) ? type
            : throw new CliException($"--icmp-type \"{text}\" is neither a number (0-255) nor an ICMP{v6} type name (EchoRequest, " +
                "DestinationUnreachable, …)");
    }
}
