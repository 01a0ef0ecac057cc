using System.CommandLine;
using System.Text.Json;
using Membrane.Api;
using Membrane.Cli.Output;
using Membrane.Policy.Api;

namespace Membrane.Cli.Commands;

/// <summary>The agent and the commands that talk to it: agent, status, apply, delete, reset, endpoint, identity, monitor.</summary>
public static class AgentCommands
{
    public static IEnumerable<Command> Create(CliOutput output)
    {
        yield return Status(output);
        yield return Apply(output, delete: false);
        yield return Apply(output, delete: true);
        yield return Reset(output);
        yield return EndpointCommands.Create(output);
        yield return Identity(output);
        yield return Monitor(output);
    }

    private static Command Status(CliOutput output)
    {
        var format = CliOutput.CreateFormatOption();
        var command = new Command("status", "Show the agent's state") { format };
        command.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var s = await client.Get("v1/status", AgentJsonContext.Default.StatusResponse).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(s, AgentJsonContext.Default.StatusResponse));
                return CliApp.Success;
            }
            output.Out.WriteLine($"Agent:       running (revision {s.Revision}), kernel {s.Kernel}");
            output.Out.WriteLine($"Endpoints:   {s.Endpoints} pods in {s.Namespaces} namespaces, {s.Identities} identities");
            output.Out.WriteLine($"Policies:    {s.Policies}{(s.PolicyAuditMode ? "; audit mode on every endpoint (nothing is dropped by " +
                "policy)" : "")}");
            output.Out.WriteLine($"Datapath:    maps pinned in {s.PinDirectory}; node namespace {s.NodeNamespace}; last regeneration " +
                $"{s.LastRegenerationMilliseconds} ms");
            if (s.Attachment is { } attachment)
            {
                output.Out.WriteLine($"Attachment:  {attachment}");
            }
            if (s.HostRouting is { } routing)
            {
                output.Out.WriteLine($"Routing:     {routing}");
            }
            output.Out.WriteLine($"Drops:       {string.Join(", ", s.Drops.Select(d => $"{d.Key} {d.Value}"))}");
            output.Out.WriteLine($"Metrics:     {s.Metrics ?? "not served"}{(s.MetricsExposed ? " — not a loopback address: anyone who " +
                "can reach it reads pod names, policies and drop counts" : "")}");
            if (s.Cluster is { } cluster)
            {
                output.Out.WriteLine($"Cluster:     node {cluster.Node}, {cluster.RoutingMode} routing, {cluster.Health}; " +
                    "enforces store revision " +
                    $"{cluster.EnforcedRevision}; {cluster.Nodes.Count} nodes, {cluster.RemoteEndpoints} addresses of other nodes' pods");
                foreach (var reason in cluster.Reasons)
                {
                    output.Out.WriteLine($"             degraded: {reason}");
                }
            }
            if (s.Maps is { Count: > 0 } maps)
            {
                output.Out.WriteLine($"Maps:        " +
                    $"{string.Join(", ", maps.Select(m => $"{m.Name} {m.Entries:N0}/{m.MaxEntries:N0} ({m.Percent}%)"))}");
            }
            return CliApp.Success;
        });
        return command;
    }

    /// <summary>Reads files/directories, validates them locally (precise file errors), and returns one YAML text.</summary>
    internal static ManifestRequest ReadManifests(string[] paths, CliOutput output)
    {
        var load = ManifestLoader.LoadPaths(paths);
        if (!load.IsValid)
        {
            foreach (var error in load.Errors)
            {
                output.Err.WriteLine(error);
            }
            throw new InvalidInputException($"invalid: {load.Errors.Count} error(s); nothing was applied");
        }
        var files = ManifestLoader.Files(paths);
        var yaml = string.Join("\n---\n", files.Select(File.ReadAllText));
        if (yaml.Length > YamlLimits.MaxTextLength)
        {
            throw new InvalidInputException($"invalid: {yaml.Length:N0} characters in one request, more than the " +
                $"{YamlLimits.MaxTextLength:N0} the agent accepts; apply the files in smaller groups");
        }
        return new ManifestRequest(yaml, string.Join(",", paths));
    }

    private static Command Apply(CliOutput output, bool delete)
    {
        var files = new Option<string[]>("--filename", "-f")
        {
            Description = "Files or directories of Namespace, Pod and policy documents",
            Required = true,
            AllowMultipleArgumentsPerToken = true
        };
        var format = CliOutput.CreateFormatOption();
        var timeout = ClusterWait.TimeoutOption();
        var noWait = ClusterWait.NoWaitOption();
        var command = new Command(delete ? "delete" : "apply", (delete ? "Remove the objects named in the files"
            : "Create or update Namespaces, Pods and policies") + "; in cluster mode, wait until every node that is up enforces the " +
            "change (exit 3 if one does not within --timeout)") { files, format, timeout, noWait };
        command.SetAction(async parse =>
        {
            var request = ReadManifests(parse.GetValue(files)!, output);
            _ = ClusterWait.Duration(parse.GetValue(timeout)!); // a bad duration is refused before anything changes
            using var client = AgentClient.FromEnvironment();
            var result = await client.Post(delete ? "v1/delete" : "v1/apply", request, AgentJsonContext.Default.ManifestRequest,
                AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
            return await ClusterWait.PrintAfterEnforcedAsync(client, output, result, parse.GetValue(format) == "json",
                parse.GetValue(timeout)!, parse.GetValue(noWait)).ConfigureAwait(false);
        });
        return command;
    }

    internal static void PrintChanges(CliOutput output, ApplyResponse result, bool json)
    {
        if (json)
        {
            output.Out.WriteLine(JsonSerializer.Serialize(result, AgentJsonContext.Default.ApplyResponse));
            return;
        }
        foreach (var change in result.Changes)
        {
            output.Out.WriteLine($"{change.ObjectName} {change.Action}");
        }
        output.Out.WriteLine($"revision {result.Revision}");
    }

    private static Command Reset(CliOutput output)
    {
        var command = new Command("reset", "Remove every pod, namespace and policy from the running agent (prints the new revision " +
            "as text only: no -o json)");
        command.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var result = await client.Post("v1/reset", AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
            output.Out.WriteLine($"removed {result.Changes.Count} objects; revision {result.Revision}");
            return CliApp.Success;
        });
        return command;
    }

    private static Command Identity(CliOutput output)
    {
        var identity = new Command("identity", "Security identities");
        var format = CliOutput.CreateFormatOption();
        var list = new Command("list", "List identities") { format };
        list.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var identities = await client.Get("v1/identities", AgentJsonContext.Default.ListIdentityOutput).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(identities, AgentJsonContext.Default.ListIdentityOutput));
                return CliApp.Success;
            }
            Table.Write(output.Out, ["ID", "KIND", "ENDPOINTS", "LABELS"],
                identities.Select(i => (IReadOnlyList<string>)[$"{i.Id}", i.Kind, string.Join(",", i.Endpoints), string.Join(",",
                    i.Labels)]));
            return CliApp.Success;
        });
        identity.Subcommands.Add(list);
        return identity;
    }

    private static Command Monitor(CliOutput output)
    {
        var type = new Option<string>("--type") { Description = "drop (default), verdict, or all", DefaultValueFactory = _ => "drop" };
        type.OneOf("drop", "verdict", "all");
        var format = CliOutput.CreateFormatOption();
        var count = new Option<int?>("--count") { Description = "Stop after this many events" };
        var command = new Command("monitor", "Stream datapath events: one line per dropped packet (or allowed new connection)") { type,
            format, count };
        command.SetAction(async (parse, cancel) =>
        {
            using var client = AgentClient.FromEnvironment();
            var seen = 0;
            try
            {
                // Said once the agent streams: a script may wait for this line before causing the events it watches for.
                await foreach (var e in client.Stream($"v1/monitor?type={parse.GetValue(type)}", AgentJsonContext.Default.MonitorEvent,
                    cancel, () => output.Err.WriteLine($"Listening for {parse.GetValue(type)} events... (Ctrl-C to stop)"))
                    .ConfigureAwait(false))
                {
                    output.Out.WriteLine(parse.GetValue(format) == "json" ? JsonSerializer.Serialize(e,
                        AgentJsonContext.Default.MonitorEvent).ReplaceLineEndings("") : EventFormat.Line(e));
                    await output.Out.FlushAsync(cancel).ConfigureAwait(false);
                    if (parse.GetValue(count) is { } max && ++seen >= max)
                    {
                        break;
                    }
                }
            }
            catch (OperationCanceledException)
            {
            }
            return CliApp.Success;
        });
        return command;
    }
}

/// <summary>Input the user must fix: printed, exit status 1.</summary>
public sealed class InvalidInputException(string message) : Exception(message);
