using System.CommandLine;
using System.Globalization;
using System.Text.Json;
using Membrane.Api;
using Membrane.Cli.Output;

namespace Membrane.Cli.Commands;

/// <summary>
/// Cluster mode: a change is answered when every node that is up enforces it (its endpoints, its maps, the addresses
/// of every pod of that revision), or after <c>--timeout</c> with exit 3 naming the nodes that do not and what each
/// lacks; <c>--no-wait</c> returns after the commit. On one node a change is enforced when it returns.
/// </summary>
internal static class ClusterWait
{
    public const int NotEnforced = 3;

    public static Option<string> TimeoutOption() => new("--timeout")
    {
        Description = "Cluster mode: how long to wait for every node that is up to enforce the change (500ms, 30s, 2m); exit 3 after it",
        DefaultValueFactory = _ => "30s",
    };

    public static Option<bool> NoWaitOption() => new("--no-wait")
    {
        Description = "Cluster mode: return once the change is committed, without waiting for the nodes to enforce it",
    };

    /// <summary>Prints the change; in cluster mode waits for the nodes first. Returns the exit status.</summary>
    public static async Task<int> PrintAfterEnforcedAsync(AgentClient client, CliOutput output, ApplyResponse result, bool json,
        string timeout, bool noWait)
    {
        var wait = Duration(timeout);
        ClusterEnforcementOutput? cluster = null;
        if (result.Node is not null && !noWait)
        {
            try
            {
                cluster = await client.Get($"v1/cluster/enforcement?revision={result.Revision.ToString(CultureInfo.InvariantCulture)}" +
                    $"&timeoutMs={((long)wait.TotalMilliseconds).ToString(CultureInfo.InvariantCulture)}",
                    AgentJsonContext.Default.ClusterEnforcementOutput).ConfigureAwait(false);
            }
            catch (AgentRequestException e)
            {
                // The change is committed: that is not undone by a wait that could not be made.
                AgentCommands.PrintChanges(output, result, json);
                output.Err.WriteLine($"error: revision {result.Revision} is committed, but whether every node enforces it is not known: " +
                    e.Message);
                return NotEnforced;
            }
        }
        AgentCommands.PrintChanges(output, result, json);
        if (cluster is null)
        {
            return CliApp.Success;
        }
        if (json && !cluster.Enforced)
        {
            output.Err.WriteLine(JsonSerializer.Serialize(cluster, AgentJsonContext.Default.ClusterEnforcementOutput));
        }
        if (cluster.Enforced)
        {
            if (!json)
            {
                output.Out.WriteLine($"enforced by {cluster.Nodes.Count} node(s): {string.Join(", ", cluster.Nodes.Select(n => n.Node))}");
            }
            return CliApp.Success;
        }
        foreach (var node in cluster.Nodes.Where(n => n.EnforcedRevision < cluster.Revision))
        {
            output.Err.WriteLine($"error: node {node.Node} has not enforced revision {cluster.Revision} after {timeout} (it enforces " +
                $"{node.EnforcedRevision}, has seen {node.SeenRevision})" +
                (node.Lacks.Count > 0 ? ": " + string.Join("; ", node.Lacks) : ""));
        }
        return NotEnforced;
    }

    /// <summary>A wait as <c>500ms</c>, <c>30s</c>, <c>2m</c>, at most 10 minutes; a bad one is the caller's error.</summary>
    public static TimeSpan Duration(string text) => Durations.Parse(text, "--timeout", TimeSpan.FromMinutes(10), "500ms, 30s, 2m",
        "10m");
}
