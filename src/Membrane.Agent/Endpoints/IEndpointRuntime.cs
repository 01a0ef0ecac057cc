using System.Net;
using Membrane.Agent.State;
using Membrane.Datapath.Maps;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Endpoints;

/// <summary>
/// How an endpoint's interface comes to exist. The sandbox creates a pod's namespace, veth pair, addresses and routes
/// itself; a CNI-driven runtime is handed the interface by the container runtime. Everything after that (address
/// map, policy maps, programs, conntrack) is the same for both and is not the runtime's business.
/// </summary>
public interface IEndpointRuntime
{
    /// <summary>The network namespace holding the host ends of the endpoints' interfaces: where the programs attach.</summary>
    string NodeNamespace { get; }

    /// <summary>
    /// What a pod reaches the node at: its own addresses and the node-scoped prefixes (<see cref="NodeScope"/>). The
    /// ipcache gives them the host identity; read at every regeneration, so addresses the node gains are covered then.
    /// </summary>
    IReadOnlyList<IPNetwork> HostPrefixes { get; }

    /// <summary>Makes the node ready (called once at start, before anything is adopted or created).</summary>
    void Prepare();

    /// <summary>Creates the endpoint's interface with its addresses and routes and returns its record.</summary>
    EndpointRecord Create(Endpoint endpoint);

    /// <summary>True when a recorded interface still exists as recorded (a restarted agent adopts it).</summary>
    bool IsIntact(EndpointRecord record);

    /// <summary>An intact endpoint adopted after a restart: whatever the runtime runs beside it is running again.</summary>
    void Adopt(Endpoint endpoint, EndpointRecord record);

    /// <summary>Removes the endpoint's interface and whatever the runtime created for it. Idempotent.</summary>
    void Delete(string key, EndpointRecord record);

    /// <summary>Removes what the runtime created for endpoints that are none of <paramref name="keep"/> (left by a crash).</summary>
    void RemoveOrphans(IEnumerable<string> keep);

    /// <summary>
    /// The frame addresses host routing delivers a packet for the endpoint with: its interface's MAC and its gateway's
    /// (the host-side veth). Null when the node does not route for the endpoint (a chained interface on someone else's
    /// bridge): its packets take the node's stack.
    /// </summary>
    DeliveryMacs? Delivery(EndpointRecord record);
}
