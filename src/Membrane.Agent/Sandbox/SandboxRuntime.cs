using System.Net;
using Membrane.Agent.Endpoints;
using Membrane.Agent.State;
using Membrane.Datapath.Maps;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Sandbox;

/// <summary>
/// Endpoints as the built-in sandbox makes them: a network namespace per pod joined to the node namespace by a veth
/// pair, and a pod server echoing on the pod's container ports.
/// </summary>
public sealed class SandboxRuntime : IEndpointRuntime
{
    private readonly NodeNetwork _node;
    private readonly PodNetwork _pods;
    private readonly PodServers _servers;
    private readonly int _mtu;

    public SandboxRuntime(AgentOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        IPAddress[] own = options.UnderlayAddress is { } underlay
            ? [AgentOptions.GatewayIPv4, options.NodeIPv4, options.NodeIPv6, underlay, UnderlayNetwork.IPv6Of(underlay)]
            : [AgentOptions.GatewayIPv4, options.NodeIPv4, options.NodeIPv6];
        HostPrefixes = [.. own.Select(NodeScope.HostRoute), .. NodeScope.Prefixes];
        _node = new NodeNetwork(options);
        _pods = new PodNetwork(options, _node);
        _servers = new PodServers(options);
        _mtu = options.PodMtu;
    }

    public string NodeNamespace => _node.Name;

    /// <summary>
    /// The pods' IPv4 gateway and the node's address in each pod range (all on the node namespace's loopback), and the
    /// node-scoped prefixes (the IPv6 gateway fe80::1 among them). The node namespace has no other address.
    /// </summary>
    public IReadOnlyList<IPNetwork> HostPrefixes { get; }

    public void Prepare() => _node.Ensure();

    public EndpointRecord Create(Endpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        var record = _pods.Create(endpoint.Key, endpoint.Addresses, _mtu);
        _servers.Start(endpoint.Pod, record.Netns);
        return record;
    }

    public bool IsIntact(EndpointRecord record) => _pods.IsIntact(record);

    public void Adopt(Endpoint endpoint, EndpointRecord record)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        ArgumentNullException.ThrowIfNull(record);
        if (!_servers.IsRunning(endpoint.Key))
        {
            _servers.Start(endpoint.Pod, record.Netns);
        }
    }

    public void Delete(string key, EndpointRecord record)
    {
        _servers.Stop(key);
        _pods.Delete(record);
    }

    public void RemoveOrphans(IEnumerable<string> keep) => _pods.RemoveOrphans(keep);

    public DeliveryMacs? Delivery(EndpointRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        return NetworkNamespace.MacOf(record.Netns, "eth0") is { } pod
            && NetworkNamespace.MacOf(_node.Name, record.HostInterface) is { } gateway
            ? new DeliveryMacs(pod, gateway)
            : null;
    }
}
