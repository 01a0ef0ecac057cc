using Membrane.Agent.Changes;
using Membrane.Agent.Queries;
using Membrane.Agent.Regeneration;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Datapath;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Endpoints;

/// <summary>Per-endpoint settings (<c>membrane endpoint config</c>): policy audit mode, kept in the state file.</summary>
public sealed class EndpointSettings(ChangeCoordinator coordinator, EndpointManager endpoints, AgentQueries queries,
    Regenerator regenerator, PolicyDatapath datapath, ILogger log)
{
    /// <summary>The settings an endpoint has, with the values each accepts.</summary>
    public static readonly IReadOnlyDictionary<string, string[]> Known = new Dictionary<string, string[]>(StringComparer.Ordinal)
    {
        [EndpointConfigOutput.PolicyAuditMode] = [EndpointConfigOutput.Enabled, EndpointConfigOutput.Disabled],
    };

    /// <summary>
    /// Shows an endpoint's settings and changes those given. Every setting is checked before any is applied: a bad one
    /// changes nothing. Leaving audit mode forgets the connections policy denies, as a narrowing policy change does.
    /// </summary>
    public async Task<EndpointConfigOutput> ConfigureAsync(EndpointConfigRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var audit = ParseSettings(request.Settings);
        return await coordinator.ExclusiveAsync(() =>
        {
            var record = queries.FindRecord(request.Id ?? throw new AgentInputException("no endpoint given"));
            if (audit is { } enabled && enabled != record.PolicyAudit)
            {
                record = endpoints.SetPolicyAudit(record.Key, enabled);
                coordinator.Save();
                Log.EndpointAuditMode(log, record.Key, enabled ? EndpointConfigOutput.Enabled : EndpointConfigOutput.Disabled);
                if (!enabled)
                {
                    regenerator.RevalidateConnections(coordinator.State.Engine, new Dictionary<uint, Policy.Resolution.MapState>
                    {
                        [(uint)record.IfIndex] = coordinator.State.Engine.Resolve(record.Key).State,
                    });
                }
            }
            return ConfigOutput(record);
        }, cancel).ConfigureAwait(false);
    }

    private EndpointConfigOutput ConfigOutput(EndpointRecord record) => new(record.IfIndex, record.Key,
        new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [EndpointConfigOutput.PolicyAuditMode] = record.PolicyAudit ? EndpointConfigOutput.Enabled : EndpointConfigOutput.Disabled,
        },
        datapath.AuditMode);

    /// <summary>The audit mode asked for, if any; an unknown setting or value is refused with the accepted ones.</summary>
    private static bool? ParseSettings(IReadOnlyDictionary<string, string>? settings)
    {
        bool? audit = null;
        foreach (var (name, value) in settings ?? new Dictionary<string, string>())
        {
            var known = Known.Keys.FirstOrDefault(k => string.Equals(k, name, StringComparison.OrdinalIgnoreCase))
                ?? throw new AgentInputException(
                    $"unknown endpoint setting \"{name}\" (known: {string.Join(", ", Known.Keys)})");
            var accepted = Known[known];
            var match = accepted.FirstOrDefault(v => string.Equals(v, value, StringComparison.OrdinalIgnoreCase))
                ?? throw new AgentInputException($"{known}: \"{value}\" is not one of {string.Join(", ", accepted)}");
            audit = match == EndpointConfigOutput.Enabled;
        }
        return audit;
    }
}
