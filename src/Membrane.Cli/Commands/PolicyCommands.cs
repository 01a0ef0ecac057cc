using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
using Membrane.Api;
using Membrane.Cli.Output;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;

namespace Membrane.Cli.Commands;

/// <summary><c>membrane policy …</c>: offline validation and trace.</summary>
public static class PolicyCommands
{
    public static Command Create(CliOutput output)
    {
        var policy = new Command("policy", "Validate, import, inspect and trace network policies");
        policy.Subcommands.Add(Validate(output));
        policy.Subcommands.Add(Import(output));
        policy.Subcommands.Add(Get(output));
        policy.Subcommands.Add(Delete(output));
        policy.Subcommands.Add(Trace(output));
        return policy;
    }

    private static Command Validate(CliOutput output)
    {
        var paths = new Argument<string[]>("path")
        {
            Arity = ArgumentArity.OneOrMore,
            Description = "Files or directories of YAML documents"
        };
        var format = CliOutput.CreateFormatOption();
        var command = new Command("validate", "Check policy (and workload) files without applying them") { paths, format };
        command.SetAction(parse =>
        {
            var result = ManifestLoader.LoadPaths(parse.GetValue(paths)!);
            var m = result.Manifests;
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(Json.Write(new ValidateOutput(result.IsValid, m.Policies.Count, m.Namespaces.Count, m.Pods.Count,
                    result.Errors.Select(ErrorOutput.From).ToList()), CliJsonContext.Default.ValidateOutput));
            }
            else if (result.IsValid)
            {
                output.Out.WriteLine($"valid: {m.Policies.Count} policies, {m.Namespaces.Count} namespaces, {m.Pods.Count} pods");
            }
            else
            {
                foreach (var error in result.Errors)
                {
                    output.Err.WriteLine(error);
                }
                output.Err.WriteLine($"invalid: {result.Errors.Count} error(s); nothing was applied");
            }
            return result.IsValid ? CliApp.Success : CliApp.Failure;
        });
        return command;
    }

    private static Command Trace(CliOutput output)
    {
        var policies = new Option<string[]>("--policies")
        {
            Description = "Policy files or directories (offline trace)",
            AllowMultipleArgumentsPerToken = true
        };
        var workloads = new Option<string[]>("--workloads")
        {
            Description = "Namespace/Pod files or directories (offline trace)",
            AllowMultipleArgumentsPerToken = true
        };
        var from = new Option<string>("--from")
        {
            Description = "Source: NAMESPACE/POD, or labels such as " +
            "k8s:app=client,io.kubernetes.pod.namespace=demo",
            Required = true
        };
        var to = new Option<string>("--to") { Description = "Destination: NAMESPACE/POD, or labels", Required = true };
        var flow = new FlowOptions();
        var format = CliOutput.CreateFormatOption();
        var command = new Command("trace", "Explain whether a flow is allowed: the policies, the matching rule, the final verdict")
        {
            policies, workloads, from, to, format,
        };
        flow.AddTo(command);
        command.SetAction(async parse =>
        {
            var paths = (parse.GetValue(policies) ?? []).Concat(parse.GetValue(workloads) ?? []).ToList();
            if (paths.Count == 0)
            {
                return await TraceWithAgent(output, parse, flow, Endpoint(parse.GetValue(from)!, "--from"), Endpoint(parse.GetValue(to)!,
                    "--to"), parse.GetValue(format) == "json").ConfigureAwait(false);
            }
            var load = ManifestLoader.LoadPaths(paths);
            if (!load.IsValid)
            {
                foreach (var error in load.Errors)
                {
                    output.Err.WriteLine(error);
                }
                return CliApp.Error;
            }
            var engine = new PolicyEngine();
            engine.Apply(load.Manifests);
            var request = flow.Build(parse, Endpoint(parse.GetValue(from)!, "--from"), Endpoint(parse.GetValue(to)!, "--to"));
            foreach (var key in new[] { request.From, request.To }.Where(k => !Tracer.IsLabels(k)))
            {
                if (engine.FindEndpoint(key) is null)
                {
                    throw new CliException($"no pod {key} in the workload files");
                }
            }
            var result = Tracer.Trace(engine, request);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(Json.Write(TraceJson.From(result), AgentJsonContext.Default.TraceOutput));
            }
            else
            {
                output.Out.Write(Tracer.Format(engine, result));
            }
            return result.Allowed ? CliApp.Success : CliApp.Failure;
        });
        return command;
    }

    private static async Task<int> TraceWithAgent(CliOutput output, ParseResult parse, FlowOptions flow, string from, string to, bool json)
    {
        flow.Build(parse, from, to);
        var (protocol, port, type, code, family) = flow.Values(parse);
        using var client = AgentClient.FromEnvironment();
        var result = await client.Post("v1/trace", new TraceQuery(from, to, protocol, port, type, code, family),
            AgentJsonContext.Default.TraceQuery, AgentJsonContext.Default.TraceOutput).ConfigureAwait(false);
        if (json)
        {
            output.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(result with { Text = null },
                AgentJsonContext.Default.TraceOutput));
        }
        else
        {
            output.Out.Write(result.Text);
        }
        return result.Verdict == "ALLOWED" ? CliApp.Success : CliApp.Failure;
    }

    private static Command Import(CliOutput output)
    {
        var path = new Argument<string[]>("path") { Arity = ArgumentArity.OneOrMore, Description = "Policy files or directories" };
        var format = CliOutput.CreateFormatOption();
        var dryRun = DryRunOption();
        var timeout = ClusterWait.TimeoutOption();
        var noWait = ClusterWait.NoWaitOption();
        var command = new Command("import", "Add or replace policies in the running agent; prints the new revision (in cluster " +
            "mode once every node that is up enforces it)")
        {
            path, format, dryRun, timeout, noWait,
        };
        command.SetAction(async parse =>
        {
            var request = AgentCommands.ReadManifests(parse.GetValue(path)!, output);
            using var client = AgentClient.FromEnvironment();
            if (parse.GetValue(dryRun))
            {
                return await DryRun(client, new DryRunRequest(request.Yaml, request.File), output, parse.GetValue(format) == "json")
                    .ConfigureAwait(false);
            }
            _ = ClusterWait.Duration(parse.GetValue(timeout)!);
            var result = await client.Post("v1/policies", request, AgentJsonContext.Default.ManifestRequest,
                AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
            return await ClusterWait.PrintAfterEnforcedAsync(client, output, result, parse.GetValue(format) == "json",
                parse.GetValue(timeout)!, parse.GetValue(noWait)).ConfigureAwait(false);
        });
        return command;
    }

    private static Command Get(CliOutput output)
    {
        var format = CliOutput.CreateFormatOption();
        var command = new Command("get", "Print the policies the agent enforces, as YAML") { format };
        command.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var result = await client.Get("v1/policies", AgentJsonContext.Default.PolicyListResponse).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(result, AgentJsonContext.Default.PolicyListResponse));
                return CliApp.Success;
            }
            output.Out.WriteLine($"# revision {result.Revision}, {result.Policies.Count} policies");
            foreach (var p in result.Policies)
            {
                output.Out.WriteLine("---");
                output.Out.WriteLine(p.Namespace is null ? $"# {p.Kind}/{p.Name}" : $"# {p.Kind}/{p.Namespace}/{p.Name}");
                output.Out.Write(p.Yaml);
            }
            return CliApp.Success;
        });
        return command;
    }

    private static Command Delete(CliOutput output)
    {
        var name = new Argument<string?>("name")
        {
            Arity = ArgumentArity.ZeroOrOne,
            Description = "Kind/namespace/name, namespace/name or name"
        };
        var all = new Option<bool>("--all") { Description = "Delete every policy" };
        var format = CliOutput.CreateFormatOption();
        var dryRun = DryRunOption();
        var timeout = ClusterWait.TimeoutOption();
        var noWait = ClusterWait.NoWaitOption();
        var command = new Command("delete", "Delete a policy (or all) from the running agent (in cluster mode, return once every " +
            "node that is up enforces it)") { name, all, format, dryRun, timeout, noWait };
        command.SetAction(async parse =>
        {
            if (parse.GetValue(name) is null == !parse.GetValue(all))
            {
                throw new CliException("name one policy, or use --all");
            }
            using var client = AgentClient.FromEnvironment();
            if (parse.GetValue(dryRun))
            {
                return await DryRun(client, new DryRunRequest(Delete: parse.GetValue(name), All: parse.GetValue(all)), output,
                    parse.GetValue(format) == "json").ConfigureAwait(false);
            }
            var query = parse.GetValue(all) ? "all=true" : $"name={Uri.EscapeDataString(parse.GetValue(name)!)}";
            _ = ClusterWait.Duration(parse.GetValue(timeout)!);
            var result = await client.Delete($"v1/policies?{query}", AgentJsonContext.Default.ApplyResponse).ConfigureAwait(false);
            return await ClusterWait.PrintAfterEnforcedAsync(client, output, result, parse.GetValue(format) == "json",
                parse.GetValue(timeout)!, parse.GetValue(noWait)).ConfigureAwait(false);
        });
        return command;
    }

    private static Option<bool> DryRunOption() => new("--dry-run")
    {
        Description = "Install nothing: report which live connections the change would cut or admit, and why (exit 1 if any is cut)",
    };

    /// <summary>Prints what the change would do; exit 1 when a live connection would be cut.</summary>
    private static async Task<int> DryRun(AgentClient client, DryRunRequest request, CliOutput output, bool json)
    {
        var result = await client.Post("v1/policies/dry-run", request, AgentJsonContext.Default.DryRunRequest,
            AgentJsonContext.Default.DryRunResponse).ConfigureAwait(false);
        if (json)
        {
            output.Out.WriteLine(System.Text.Json.JsonSerializer.Serialize(result, AgentJsonContext.Default.DryRunResponse));
        }
        else
        {
            output.Out.WriteLine($"dry run: nothing was installed; {result.ConnectionsChecked} live connections checked, " +
                $"{result.WouldBeCut.Count} would be cut, {result.WouldBeAllowed.Count} would be admitted; " +
                $"{result.Endpoints.Count} endpoints' policy would change");
            foreach (var e in result.Endpoints)
            {
                output.Out.WriteLine($"  {e.Pod}: {e.EntriesBefore} → {e.EntriesAfter} map entries");
            }
            output.Out.WriteLine($"recent flows (flow ring): {result.FlowsChecked} policy decisions checked, " +
                $"{result.FlowsWouldBeCut?.Count ?? 0} kinds would be denied, {result.FlowsWouldBeAllowed?.Count ?? 0} would be allowed");
            foreach (var (title, connections) in new[] { ("WOULD BE CUT", result.WouldBeCut), ("WOULD BE ADMITTED",
                result.WouldBeAllowed), ("RECENT FLOWS THAT WOULD BE DENIED", result.FlowsWouldBeCut ?? []),
                ("RECENT FLOWS THAT WOULD BE ALLOWED", result.FlowsWouldBeAllowed ?? []) })
            {
                if (connections.Count == 0)
                {
                    continue;
                }
                output.Out.WriteLine(title);
                Membrane.Cli.Output.Table.Write(output.Out, ["POD", "DIRECTION", "FLOW", "SOURCE", "DESTINATION", "SEEN", "CAUSE"],
                    connections.Select(c => (IReadOnlyList<string>)[c.Pod, c.Direction,
                        c.IcmpType is { } type ? $"{c.Protocol} type {type}" : $"{c.Protocol}/{c.Port}", c.Source, c.Destination,
                            $"{c.Seen}", c.Cause]));
            }
        }
        return result.WouldBeCut.Count > 0 || result.FlowsWouldBeCut is { Count: > 0 } ? CliApp.Failure : CliApp.Success;
    }

    private static string Endpoint(string text, string option)
    {
        if (Tracer.IsLabels(text))
        {
            return text;
        }
        var parts = text.Split('/');
        if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
        {
            throw new CliException($"{option} \"{text}\" must be NAMESPACE/POD");
        }
        return text;
    }

}

/// <summary>The flow options shared by trace and probe: protocol, port, ICMP type/code and family.</summary>
public sealed class FlowOptions
{
    private readonly Option<string> _protocol = new("--protocol") { Description = "tcp, udp, sctp, icmp or icmpv6", Required = true };
    private readonly Option<int?> _port = new("--port") { Description = "Destination port (tcp, udp, sctp)" };
    private readonly Option<string?> _icmpType = new("--icmp-type") { Description = "ICMP type: a number or a name such as EchoRequest" };
    private readonly Option<int?> _icmpCode = new("--icmp-code") { Description = "ICMP code (0-255)" };
    private readonly Option<string?> _family = new("--family") { Description = "ipv4 or ipv6 (default ipv4; icmpv6 implies ipv6)" };

    public void AddTo(Command command)
    {
        ArgumentNullException.ThrowIfNull(command);
        _protocol.OneOf("tcp", "udp", "sctp", "icmp", "icmpv6");
        _family.OneOf("ipv4", "ipv6");
        command.Options.Add(_protocol);
        command.Options.Add(_port);
        command.Options.Add(_icmpType);
        command.Options.Add(_icmpCode);
        command.Options.Add(_family);
    }

    public TraceRequest Build(ParseResult parse, string from, string to)
    {
        ArgumentNullException.ThrowIfNull(parse);
        try
        {
            return FlowSpec.Parse(from, to, parse.GetValue(_protocol)!, parse.GetValue(_port), parse.GetValue(_icmpType),
                parse.GetValue(_icmpCode), parse.GetValue(_family));
        }
        catch (ArgumentException e)
        {
            throw new CliException(e.Message);
        }
    }

    public (string Protocol, int? Port, string? IcmpType, int? IcmpCode, string? Family) Values(ParseResult parse)
    {
        ArgumentNullException.ThrowIfNull(parse);
        return (parse.GetValue(_protocol)!, parse.GetValue(_port), parse.GetValue(_icmpType), parse.GetValue(_icmpCode),
            parse.GetValue(_family));
    }
}
