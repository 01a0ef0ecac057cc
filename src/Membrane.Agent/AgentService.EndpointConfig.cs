using Membrane.Agent.State;
using Membrane.Api;

namespace Membrane.Agent;

/// <summary>Per-endpoint settings (<c>membrane endpoint config</c>): policy audit mode, kept in the state file.</summary>
public sealed partial class AgentService
{
    /// <summary>The settings an endpoint has, with the values each accepts.</summary>
    public static readonly IReadOnlyDictionary<string, string[]> EndpointSettings = new Dictionary<string, string[]>(StringComparer.Ordinal)
    {
        [EndpointConfigOutput.PolicyAuditMode] = [EndpointConfigOutput.Enabled, EndpointConfigOutput.Disabled],
    };

    /// <summary>
    /// Shows an endpoint's settings and changes those given. Every setting is checked before any is applied: a bad one
    /// changes nothing. Leaving audit mode forgets the connections policy denies, as a narrowing policy change does.
    /// </summary>
    public async Task<EndpointConfigOutput> ConfigureEndpointAsync(EndpointConfigRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var audit = ParseSettings(request.Settings);
        await _gate.WaitAsync(cancel).ConfigureAwait(false);
        try
        {
            var record = Queries.FindRecord(request.Id ?? throw new AgentInputException("no endpoint given"));
            if (audit is { } enabled && enabled != record.PolicyAudit)
            {
                record = _endpoints.SetPolicyAudit(record.Key, enabled);
                Save();
                Log.EndpointAuditMode(_log, record.Key, enabled ? EndpointConfigOutput.Enabled : EndpointConfigOutput.Disabled);
                if (!enabled)
                {
                    _regenerator.RevalidateConnections(_engine, new Dictionary<uint, Policy.Resolution.MapState>
                    {
                        [(uint)record.IfIndex] = _engine.Resolve(record.Key).State,
                    });
                }
            }
            return ConfigOutput(record);
        }
        finally
        {
            _gate.Release();
        }
    }

    private EndpointConfigOutput ConfigOutput(EndpointRecord record) => new(record.IfIndex, record.Key,
        new Dictionary<string, string>(StringComparer.Ordinal)
        {
            [EndpointConfigOutput.PolicyAuditMode] = record.PolicyAudit ? EndpointConfigOutput.Enabled : EndpointConfigOutput.Disabled,
        },
        Datapath.AuditMode);

    /// <summary>The audit mode asked for, if any; an unknown setting or value is refused with the accepted ones.</summary>
    private static bool? ParseSettings(IReadOnlyDictionary<string, string>? settings)
    {
        bool? audit = null;
        foreach (var (name, value) in settings ?? new Dictionary<string, string>())
        {
            var known = EndpointSettings.Keys.FirstOrDefault(k => string.Equals(k, name, StringComparison.OrdinalIgnoreCase))
                ?? throw new AgentInputException(
                    $"unknown endpoint setting \"{name}\" (known: {string.Join(", ", EndpointSettings.Keys)})");
            var accepted = EndpointSettings[known];
            var match = accepted.FirstOrDefault(v => string.Equals(v, value, StringComparison.OrdinalIgnoreCase))
                ?? throw new AgentInputException($"{known}: \"{value}\" is not one of {string.Join(", ", accepted)}");
            audit = match == EndpointConfigOutput.Enabled;
        }
        return audit;
    }
}
