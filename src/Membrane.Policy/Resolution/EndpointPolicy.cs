using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>The resolved policy of one endpoint, with what selected it (for trace and <c>endpoint get</c>).</summary>
public sealed record EndpointPolicy(
    Endpoint Endpoint,
    MapState State,
    IReadOnlyList<PolicySpec> SelectingSpecs,
    IReadOnlySet<TrafficDirection> Enforced,
    long Revision)
{
    public IEnumerable<PolicySpec> SpecsFor(TrafficDirection direction) =>
        SelectingSpecs.Where(s => s.Enforces.Contains(direction) || s.Rules.Any(r => r.Direction == direction));
}
