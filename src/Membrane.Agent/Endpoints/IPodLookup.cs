using Membrane.Agent.State;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Endpoints;

/// <summary>The pods a probe can use: their interface records and endpoints, read consistently.</summary>
public interface IPodLookup
{
    Task<(EndpointRecord Record, Endpoint Endpoint)?> FindPodAsync(string key, CancellationToken cancel);

    Task<IReadOnlyList<string>> PodKeysAsync(CancellationToken cancel);

    /// <summary>A pod this node knows, its own or (cluster mode) another node's: a destination, not a source.</summary>
    Task<Endpoint?> FindPeerAsync(string key, CancellationToken cancel);

    /// <summary>Every pod this node knows: its own and other nodes'.</summary>
    Task<IReadOnlyList<string>> PeerKeysAsync(CancellationToken cancel);
}
