using System.Diagnostics;
using Membrane.Agent.Changes;
using Membrane.Agent.Endpoints;
using Membrane.Agent.Monitoring;
using Membrane.Agent.State;

namespace Membrane.Agent.Regeneration;

/// <summary>
/// The enforcer of a real node: the endpoint manager makes and removes this node's pods' interfaces, the regenerator
/// writes the policy maps and the ipcache and attaches the programs. Each regeneration's duration is observed.
/// </summary>
public sealed class KernelEnforcer(EndpointManager endpoints, Regenerator regenerator, Action<TimeSpan> regenerated) : IEnforcer
{
    public IReadOnlyDictionary<string, EndpointRecord> Records => endpoints.Records;

    public RegenerationPlan Plan(DesiredState state)
    {
        ArgumentNullException.ThrowIfNull(state);
        return regenerator.Plan(state.Engine, state.RemoteNodes);
    }

    public bool Enforce(DesiredState state, RegenerationPlan plan, bool attachAll)
    {
        ArgumentNullException.ThrowIfNull(state);
        var watch = Stopwatch.StartNew();
        try
        {
            var created = endpoints.Reconcile(state.LocalEndpoints);
            regenerator.Regenerate(state.Engine, plan, attachAll);
            regenerated(watch.Elapsed);
            AgentMetrics.RegenerationSeconds.WithLabels("success").Observe(watch.Elapsed.TotalSeconds);
            return created;
        }
        catch
        {
            AgentMetrics.RegenerationSeconds.WithLabels("failure").Observe(watch.Elapsed.TotalSeconds);
            throw;
        }
    }
}
