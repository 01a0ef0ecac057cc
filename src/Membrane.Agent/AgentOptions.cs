using System.Net;
using Membrane.Agent.Ipam;
using Membrane.Api;

namespace Membrane.Agent;

/// <summary>Where the agent keeps its state and how it names what it creates.</summary>
public sealed record AgentOptions
{
    public string StateDirectory { get; init; } = AgentDefaults.StateDirectory;

    /// <summary>Who makes endpoints' interfaces: the built-in sandbox, or container runtimes through the CNI plugin.</summary>
    public AgentRuntime Runtime { get; init; } = AgentRuntime.Sandbox;

    /// <summary>Cluster mode: this node's name (pods run here when their <c>spec.nodeName</c> names it); null: one node.</summary>
    public string? Node { get; init; }

    /// <summary>Cluster mode: the etcd client URLs (<c>URL[,URL…]</c>) holding the cluster's desired state.</summary>
    public string? Etcd { get; init; }

    /// <summary>Cluster mode: the time to live of this node's lease (its keys outlive a killed agent this long).</summary>
    public TimeSpan LeaseTimeToLive { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>A CRI socket (containerd's) to read the labels of containers that have no Pod object; null: none.</summary>
    public string? CriSocket { get; init; }

    /// <summary>The API socket (mode 0600, root only).</summary>
    public string SocketPath => AgentDefaults.SocketPath(StateDirectory);

    /// <summary>bpffs directory for pinned maps: a restarted agent adopts them.</summary>
    public string PinDirectory { get; init; } = AgentDefaults.PinDirectory;

    /// <summary>Prefix of every network namespace the sandbox creates (lets tests run beside a demo).</summary>
    public string NamePrefix { get; init; } = AgentDefaults.NamePrefix;

    public static IPNetwork DefaultPodIPv4Range => PodAddressAllocator.DefaultIPv4Range;

    public static IPNetwork DefaultPodIPv6Range => PodAddressAllocator.DefaultIPv6Range;

    public IPNetwork PodIPv4Range { get; init; } = PodAddressAllocator.DefaultIPv4Range;

    public IPNetwork PodIPv6Range { get; init; } = PodAddressAllocator.DefaultIPv6Range;

    /// <summary>The namespace playing the node: every pod's host-side veth lives there, and it has no uplink.</summary>
    public string NodeNamespace => $"{NamePrefix}-node";

    /// <summary>The pods' default gateway (an address of the node namespace, answered on every veth).</summary>
    public static IPAddress GatewayIPv4 { get; } = IPAddress.Parse("169.254.1.1");

    public static IPAddress GatewayIPv6 { get; } = IPAddress.Parse("fe80::1");

    public IPAddress NodeIPv4 => PodAddressAllocator.Gateway(PodIPv4Range);

    public IPAddress NodeIPv6 => PodAddressAllocator.Gateway(PodIPv6Range);
}

public enum AgentRuntime
{
    /// <summary>The agent creates a network namespace per applied Pod (the demo).</summary>
    Sandbox,

    /// <summary>Container runtimes create pods and hand their interfaces over through membrane-cni.</summary>
    Cni,
}
