using Membrane.Agent.Regeneration;
using Membrane.Agent.State;

namespace Membrane.Agent.Changes;

/// <summary>
/// What makes the kernel follow the desired state: this node's endpoints (interfaces) and the datapath's maps and
/// programs. The change coordinator plans before it commits and enforces after it persisted; a fake takes its place
/// in unit tests of the change path.
/// </summary>
public interface IEnforcer
{
    /// <summary>The endpoints made for this node's pods, by pod key (persisted with the state).</summary>
    IReadOnlyDictionary<string, EndpointRecord> Records { get; }

    /// <summary>Resolves what changed and checks capacity; writes nothing, so a refusal changes nothing.</summary>
    RegenerationPlan Plan(DesiredState state);

    /// <summary>Endpoints created or removed as the engine says, then the kernel: true when endpoints were created.</summary>
    bool Enforce(DesiredState state, RegenerationPlan plan, bool attachAll);
}
