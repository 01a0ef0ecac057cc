using System.CommandLine;
using System.Text.Json;
using Membrane.Api;
using Membrane.Cli.Output;
using Membrane.Policy.Tracing;

namespace Membrane.Cli.Commands;

/// <summary><c>membrane connectivity probe | matrix</c>: real traffic between pods.</summary>
public static class ConnectivityCommands
{
    public static Command Create(CliOutput output)
    {
        var connectivity = new Command("connectivity", "Send real traffic between pods and report what gets through");
        connectivity.Subcommands.Add(Probe(output));
        connectivity.Subcommands.Add(Matrix(output));
        return connectivity;
    }

    private static Command Probe(CliOutput output)
    {
        var from = new Option<string>("--from") { Description = "Source pod as NAMESPACE/POD", Required = true };
        var to = new Option<string>("--to") { Description = "Destination pod as NAMESPACE/POD", Required = true };
        var timeout = TimeoutOption("How long to wait for an answer: 500ms, 2s (a bare number is milliseconds); default 1s");
        var flow = new FlowOptions();
        var format = CliOutput.CreateFormatOption();
        var command = new Command("probe", "Probe one flow from inside the source pod; exit 0 allowed, 1 denied, 2 an error")
        {
            from, to, timeout, format,
        };
        flow.AddTo(command);
        command.SetAction(async parse =>
        {
            var (protocol, port, type, code, family) = flow.Values(parse);
            var request = flow.Build(parse, parse.GetValue(from)!, parse.GetValue(to)!); // validates the flow before asking the agent
            var query = new ProbeQuery(parse.GetValue(from)!, parse.GetValue(to)!, protocol, port, type, code, family,
                Milliseconds(parse.GetValue(timeout)));
            ProbeResult result;
            using (var client = AgentClient.FromEnvironment())
            {
                try
                {
                    result = await ProbeFrom(client, query, request).ConfigureAwait(false);
                }
                catch (AgentRequestException e) when (e.Response.Node is { } node)
                {
                    // The source pod runs on another node: its agent sends the probe (the local cluster says where it is).
                    using var there = new AgentClient(SocketOfNode(node, e.Message));
                    result = await AnswerOrError(() => ProbeFrom(there, query, request)).ConfigureAwait(false);
                }
                catch (AgentRequestException e)
                {
                    throw new CliException(e.Message);
                }
            }
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(result, AgentJsonContext.Default.ProbeResult));
            }
            else
            {
                var what = result.IcmpType is { } t ? $"{result.Protocol} type {t}" : $"{result.Protocol}/{result.Port}";
                output.Out.WriteLine($"{result.From} -> {result.To} {what} ({result.Family}): {result.Result} ({result.Detail}, " +
                    $"{result.Milliseconds} ms)");
            }
            return result.Result == "allowed" ? CliApp.Success : CliApp.Failure;
        });
        return command;
    }

    /// <summary>
    /// A probe's exit status is its answer (0 allowed, 1 denied): a request the agent refused is an error (2), never
    /// read as "denied".
    /// </summary>
    private static async Task<T> AnswerOrError<T>(Func<Task<T>> request)
    {
        try
        {
            return await request().ConfigureAwait(false);
        }
        catch (AgentRequestException e)
        {
            throw new CliException(e.Message);
        }
    }

    /// <summary>
    /// The probe from the source pod's agent. A one-way ICMP message to a pod of another node is looked for there: that
    /// node's agent watches the destination pod while the source's agent sends the message (again every 50 ms), and
    /// the probe is allowed when the watcher saw it before the timeout.
    /// </summary>
    private static async Task<ProbeResult> ProbeFrom(AgentClient source, ProbeQuery query, TraceRequest request)
    {
        try
        {
            return await source.Post("v1/probe", query, AgentJsonContext.Default.ProbeQuery, AgentJsonContext.Default.ProbeResult)
                .ConfigureAwait(false);
        }
        catch (AgentRequestException e) when (e.Response.WatchOn is { } node)
        {
            using var watcher = new AgentClient(SocketOfNode(node, e.Message));
            var id = Random.Shared.Next(1, 65536);
            var family = request.Family == System.Net.Sockets.AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4";
            var clock = System.Diagnostics.Stopwatch.StartNew();
            using var stop = new CancellationTokenSource();
            var watching = watcher.Post("v1/probe/watch", new ProbeWatchQuery(query.To, family, request.IcmpType, id, query.TimeoutMs),
                AgentJsonContext.Default.ProbeWatchQuery, AgentJsonContext.Default.ProbeWatchResult);
            var sending = source.Post("v1/probe", query with { MessageId = id }, AgentJsonContext.Default.ProbeQuery,
                AgentJsonContext.Default.ProbeResult, stop.Token);
            var seen = await watching.ConfigureAwait(false);
            await stop.CancelAsync().ConfigureAwait(false);
            try
            {
                await sending.ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                // the watcher has its answer: the sender was stopped
            }
            return new ProbeResult(query.From, query.To, family == "ipv6" ? "icmpv6" : "icmp", null, request.IcmpType, family,
                seen.Seen ? "allowed" : "denied", $"{seen.Detail}, watched on {node}", Math.Round(clock.Elapsed.TotalMilliseconds, 1));
        }
    }

    private static string SocketOfNode(string node, string why)
    {
        try
        {
            return ClusterCommands.SocketOf(node);
        }
        catch (CliException e)
        {
            throw new CliException($"{why}; that node's agent is not known here ({e.Message})");
        }
    }

    private static Command Matrix(CliOutput output)
    {
        var protocol = new Option<string?>("--protocol")
        {
            Description = "tcp, udp, icmp or icmpv6 (default: icmp, icmpv6, tcp 80 and " +
            "udp 53)"
        };
        protocol.OneOf("tcp", "udp", "icmp", "icmpv6");
        var port = new Option<int?>("--port") { Description = "Port for tcp/udp" };
        var family = new Option<string?>("--family") { Description = "ipv4 or ipv6" };
        family.OneOf("ipv4", "ipv6");
        var namespaces = new Option<string[]>("--namespace")
        {
            Description = "Only pods of these namespaces",
            AllowMultipleArgumentsPerToken = true
        };
        var timeout = TimeoutOption("How long each probe waits: 500ms, 2s (a bare number is milliseconds); default 800ms");
        var format = CliOutput.CreateFormatOption();
        var command = new Command("matrix", "Probe every ordered pair of pods in parallel; '.' allowed, 'X' denied") { protocol, port,
            family, namespaces, timeout, format };
        command.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var result = await AnswerOrError(() => client.Post("v1/matrix", new MatrixQuery(parse.GetValue(protocol), parse.GetValue(port),
                parse.GetValue(family), parse.GetValue(namespaces), Milliseconds(parse.GetValue(timeout))),
                AgentJsonContext.Default.MatrixQuery, AgentJsonContext.Default.MatrixResponse)).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(result, AgentJsonContext.Default.MatrixResponse));
                return CliApp.Success;
            }
            foreach (var kind in result.Results.GroupBy(r => (r.Protocol, r.Port, r.IcmpType, r.Family)))
            {
                var title = kind.Key.IcmpType is { } t ? $"{kind.Key.Protocol} type {t}"
                    : $"{kind.Key.Protocol}/{kind.Key.Port} ({kind.Key.Family})";
                output.Out.WriteLine($"{title}: rows from, columns to");
                var index = result.Pods.Select((p, i) => (p, i)).ToDictionary(x => x.p, x => x.i);
                // Rows are the pods probed from: in cluster mode only this node's, the columns every pod of the cluster.
                var probedFrom = result.Results.Select(r => r.From).ToHashSet(StringComparer.Ordinal);
                var sources = probedFrom.Count == 0 ? result.Pods : result.Pods.Where(probedFrom.Contains).ToList();
                var rows = sources.Select(from => (IReadOnlyList<string>)[from, .. result.Pods.Select(to =>
                    from == to ? "-" : kind.FirstOrDefault(r => r.From == from && r.To == to)?.Result == "allowed" ? "." : "X")]);
                Table.Write(output.Out, ["", .. result.Pods.Select(p => $"{index[p] + 1}")], rows.Select(r =>
                    (IReadOnlyList<string>)[$"{index[r[0]] + 1} {r[0]}", .. r.Skip(1)]));
                output.Out.WriteLine();
            }
            output.Out.WriteLine($"{result.Results.Count} probes in {result.Milliseconds / 1000:F1} s: " +
                $"{result.Results.Count(r => r.Result == "allowed")} allowed, {result.Results.Count(r => r.Result != "allowed")} denied");
            return CliApp.Success;
        });
        return command;
    }

    /// <summary>--timeout: a duration with its unit (500ms, 2s, 1m), or a bare number of milliseconds as before.</summary>
    private static Option<string?> TimeoutOption(string description) => new("--timeout") { Description = description };

    private static int? Milliseconds(string? text)
    {
        if (text is null)
        {
            return null;
        }
        if (int.TryParse(text, System.Globalization.NumberStyles.None, System.Globalization.CultureInfo.InvariantCulture, out var ms)
            && ms is > 0 and <= 600_000)
        {
            return ms;
        }
        var span = Durations.Parse(text, "--timeout", TimeSpan.FromMinutes(10), "500ms, 2s, 1m", "10 minutes");
        return span.TotalMilliseconds >= 1 ? (int)span.TotalMilliseconds
            : throw new CliException($"--timeout \"{text}\" is shorter than a millisecond");
    }
}
