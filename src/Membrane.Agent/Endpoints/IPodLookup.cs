using Membrane.Agent.State;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Endpoints;

/// <summary>The pods a probe can use: their interface records and endpoints, read consistently.</summary>
public interface IPodLookup
{
    Task<(EndpointRecord Record, Endpoint Endpoint)?> FindPodAsync(string key, CancellationToken cancel);

    Task<IReadOnlyList<string>> PodKeysAsync(CancellationToken cancel);
}
