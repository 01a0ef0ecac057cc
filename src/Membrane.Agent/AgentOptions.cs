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

    /// <summary>How programs attach to devices: tcx links or clsact filters; null: tcx where the kernel has it.</summary>
    public Membrane.Datapath.Ebpf.AttachMode? AttachMode { get; init; }

    /// <summary>Agent-wide policy audit mode: on every endpoint, what policy would drop is let through and reported.</summary>
    public bool PolicyAuditMode { get; init; }

    /// <summary>
    /// Every packet a flow (the reference system's <c>--monitor-aggregation none</c>): established, reply and related
    /// packets too, not only drops, audits and new connections. Costs an event per packet.
    /// </summary>
    public bool FlowsEveryPacket { get; init; }

    /// <summary>
    /// Connections each endpoint's conntrack table holds per family: the endpoint's own budget, so a flood evicts only the
    /// flooder's connections. Tables made before a change of size keep theirs until their endpoint is made again.
    /// </summary>
    public uint ConntrackEntriesPerEndpoint { get; init; } = Membrane.Datapath.Maps.ConntrackTable.DefaultEndpointCapacity;

    /// <summary>
    /// Entries the policy map holds for all endpoints together (identity × port × direction, ICMP types included); a
    /// change that would need more is refused on this node before anything is written. Pinned: fixed until the pins go.
    /// </summary>
    public uint PolicyMapEntries { get; init; } = DefaultPolicyMapEntries;

    public const uint DefaultPolicyMapEntries = 262_144;

    /// <summary>How many recent flows (drops, new allowed connections) the agent keeps for <c>observe</c>; 0: none.</summary>
    public int FlowRingSize { get; init; } = 4096;

    /// <summary>Where Prometheus scrapes the agent's metrics (HOST:PORT); null: not served.</summary>
    public string? MetricsAddress { get; init; } = DefaultMetricsAddress;

    /// <summary>True when the operator named the metrics address: then failing to serve it stops the agent.</summary>
    public bool MetricsAddressRequired { get; init; }

    /// <summary>The reference system's agent metrics port, on loopback only.</summary>
    public const string DefaultMetricsAddress = "127.0.0.1:9962";

    /// <summary>Cluster mode: TLS to etcd (CA, and the client certificate etcd's client-cert-auth asks for); null: plain HTTP.</summary>
    public Kvstore.EtcdTls? EtcdTls { get; init; }

    /// <summary>Cluster mode: the time to live of this node's lease (its keys outlive a killed agent this long).</summary>
    public TimeSpan LeaseTimeToLive { get; init; } = TimeSpan.FromSeconds(15);

    /// <summary>
    /// Cluster mode with the sandbox: this node's address on the underlay that joins the node namespaces (with its
    /// prefix length, e.g. <c>10.250.0.1/24</c>); null: the node has no link to others (their pods are peers in policy
    /// only).
    /// </summary>
    public IPAddress? UnderlayAddress { get; init; }

    /// <summary>The prefix length of the underlay's subnet.</summary>
    public int UnderlayPrefixLength { get; init; } = 24;

    /// <summary>The namespace holding the underlay's bridge, shared by every node of the local cluster.</summary>
    public string UnderlayNamespace { get; init; } = "membrane-underlay";

    /// <summary>How a packet between two pods of this node travels (see <see cref="Membrane.Agent.HostRouting"/>).</summary>
    public HostRouting HostRouting { get; init; } = HostRouting.Bpf;

    /// <summary>How pods on different nodes reach each other (the whole cluster uses one mode).</summary>
    public RoutingMode RoutingMode { get; init; } = RoutingMode.Native;

    /// <summary>The pods' MTU: the tunnel's headers (VXLAN over IPv4: 50 bytes) come out of it in tunnel mode.</summary>
    public int PodMtu => Node is not null && UnderlayAddress is not null && RoutingMode == RoutingMode.Tunnel ? 1450 : 1500;

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

public enum HostRouting
{
    /// <summary>
    /// The sender's hook judges the destination's ingress policy too and delivers the packet into the destination's
    /// namespace itself (<c>bpf_redirect_peer</c>): no node forwarding, no hook on the destination's veth.
    /// </summary>
    Bpf,

    /// <summary>Every packet is forwarded by the node; the destination's ingress policy is judged on its veth.</summary>
    Legacy,
}

public enum RoutingMode
{
    /// <summary>Nodes route each other's pod prefixes over the underlay; the receiver learns identities from its ipcache.</summary>
    Native,

    /// <summary>VXLAN between nodes; the sender's identity travels in the VNI, believed only from known nodes.</summary>
    Tunnel,
}

public enum AgentRuntime
{
    /// <summary>The agent creates a network namespace per applied Pod (the demo).</summary>
    Sandbox,

    /// <summary>Container runtimes create pods and hand their interfaces over through membrane-cni.</summary>
    Cni,
}
