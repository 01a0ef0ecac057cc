using System.CommandLine;
using System.Text.Json;
using Membrane.Api;
using Membrane.Cli.Output;

namespace Membrane.Cli.Commands;

/// <summary><c>membrane endpoint list|get|config</c>: pods as the datapath sees them, and their settings.</summary>
internal static class EndpointCommands
{
    public static Command Create(CliOutput output)
    {
        var endpoint = new Command("endpoint", "Pods as the datapath sees them");
        var format = CliOutput.CreateFormatOption();
        var list = new Command("list", "List endpoints") { format };
        list.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var endpoints = await client.Get("v1/endpoints", AgentJsonContext.Default.ListEndpointOutput).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(endpoints, AgentJsonContext.Default.ListEndpointOutput));
                return CliApp.Success;
            }
            if (endpoints.Any(e => e.Node is not null))
            {
                // Cluster mode: every pod of the cluster with its node; other nodes' pods have no endpoint id here.
                Table.Write(output.Out, ["ENDPOINT", "POD", "NODE", "IDENTITY", "INGRESS", "EGRESS", "IPV4", "IPV6", "ENTRIES"],
                    endpoints.Select(e => (IReadOnlyList<string>)[e.Id == 0 ? "-" : $"{e.Id}", e.Pod, e.Node ?? "", $"{e.Identity}",
                        Mode(e.IngressEnforced, e.PolicyAudit), Mode(e.EgressEnforced, e.PolicyAudit), e.IPv4 ?? "", e.IPv6 ?? "",
                        $"{e.PolicyEntries}"]));
                return CliApp.Success;
            }
            Table.Write(output.Out, ["ENDPOINT", "POD", "IDENTITY", "INGRESS", "EGRESS", "IPV4", "IPV6", "ENTRIES"],
                endpoints.Select(e => (IReadOnlyList<string>)[$"{e.Id}", e.Pod, $"{e.Identity}", Mode(e.IngressEnforced, e.PolicyAudit),
                    Mode(e.EgressEnforced, e.PolicyAudit), e.IPv4 ?? "", e.IPv6 ?? "", $"{e.PolicyEntries}"]));
            return CliApp.Success;
        });
        var id = new Argument<string>("endpoint") { Description = "Endpoint id or NAMESPACE/POD" };
        var format2 = CliOutput.CreateFormatOption();
        var get = new Command("get", "Show one endpoint") { id, format2 };
        get.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var e = await client.Get($"v1/endpoint?id={Uri.EscapeDataString(parse.GetValue(id)!)}",
                AgentJsonContext.Default.EndpointOutput).ConfigureAwait(false);
            if (parse.GetValue(format2) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(e, AgentJsonContext.Default.EndpointOutput));
                return CliApp.Success;
            }
            if (e.Remote)
            {
                output.Out.WriteLine($"Pod {e.Pod} runs on node {e.Node}: a peer here (its endpoint and policy are on that node, " +
                    $"'membrane --node {e.Node} endpoint get {e.Pod}')");
                output.Out.WriteLine($"  identity {e.Identity}; addresses {e.IPv4 ?? "none yet"}, {e.IPv6 ?? "none yet"}");
                output.Out.WriteLine($"  labels: {string.Join(", ", e.Labels)}");
                return CliApp.Success;
            }
            output.Out.WriteLine($"Endpoint {e.Id}: {e.Pod}");
            output.Out.WriteLine($"  identity {e.Identity}; ingress {(Mode(e.IngressEnforced, e.PolicyAudit))}, egress " +
                $"{(Mode(e.EgressEnforced, e.PolicyAudit))}; {e.PolicyEntries} map entries");
            output.Out.WriteLine($"  addresses {e.IPv4}, {e.IPv6}; veth {e.Interface} (node side), namespace {e.Netns}");
            output.Out.WriteLine($"  labels: {string.Join(", ", e.Labels)}");
            foreach (var s in e.SelectedBy)
            {
                output.Out.WriteLine($"  selected by {s}");
            }
            return CliApp.Success;
        });
        endpoint.Subcommands.Add(list);
        endpoint.Subcommands.Add(get);
        endpoint.Subcommands.Add(Config(output));
        return endpoint;
    }

    /// <summary>Enforcement of one direction: <c>audit</c> when policy applies but audit mode lets its drops through.</summary>
    private static string Mode(bool enforced, bool audit) => !enforced ? "open" : audit ? "audit" : "enforced";

    private static Command Config(CliOutput output)
    {
        var id = new Argument<string>("endpoint") { Description = "Endpoint id or NAMESPACE/POD" };
        var settings = new Argument<string[]>("setting")
        {
            Description = "SETTING=VALUE to change (PolicyAuditMode=Enabled|Disabled); none: show the settings",
            Arity = ArgumentArity.ZeroOrMore,
        };
        var format = CliOutput.CreateFormatOption();
        var command = new Command("config", "Show or change an endpoint's settings (policy audit mode)") { id, settings, format };
        command.SetAction(async parse =>
        {
            var changes = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var setting in parse.GetValue(settings) ?? [])
            {
                var equals = setting.IndexOf('=', StringComparison.Ordinal);
                if (equals <= 0)
                {
                    output.Err.WriteLine($"error: \"{setting}\" is not SETTING=VALUE (e.g. PolicyAuditMode=Enabled)");
                    return CliApp.Failure;
                }
                changes[setting[..equals]] = setting[(equals + 1)..];
            }
            using var client = AgentClient.FromEnvironment();
            var result = await client.Post("v1/endpoint/config", new EndpointConfigRequest(parse.GetValue(id), changes),
                AgentJsonContext.Default.EndpointConfigRequest, AgentJsonContext.Default.EndpointConfigOutput).ConfigureAwait(false);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(result, AgentJsonContext.Default.EndpointConfigOutput));
                return CliApp.Success;
            }
            output.Out.WriteLine($"Endpoint {result.Id}: {result.Pod}");
            foreach (var (name, value) in result.Settings)
            {
                output.Out.WriteLine($"  {name}={value}");
            }
            if (result.AgentPolicyAuditMode)
            {
                output.Out.WriteLine("  (the agent runs with --policy-audit-mode: every endpoint is audited)");
            }
            return CliApp.Success;
        });
        return command;
    }
}
