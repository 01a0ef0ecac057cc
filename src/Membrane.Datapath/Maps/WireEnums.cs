namespace Membrane.Datapath.Maps;

/// <summary>The direction byte of policy keys, conntrack values and events (<c>enum traffic_direction</c>, bpf/common.h).</summary>
public enum WireDirection : byte
{
    /// <summary>Entering the pod: its ingress policy.</summary>
    Ingress = 0,

    /// <summary>Leaving the pod: its egress policy.</summary>
    Egress = 1,
}

/// <summary>What kind of policy entry matched (<c>enum match_kind</c>): stored in the policy value, reported in events.</summary>
public enum WireMatchKind : byte
{
    None = 0,
    Any = 1,
    L3Only = 2,
    L4Only = 3,
    L3L4 = 4,
    Icmp = 5,
}

/// <summary>
/// The tunnel's wire constants (<c>enum tunnel_wire</c>, bpf/vxlan.h): the programs build and take apart the same VXLAN
/// frames as the node's tunnel device, which the agent creates with this port.
/// </summary>
public enum WireTunnel
{
    UdpPort = 8472,
}

/// <summary>How the wire enums read in output.</summary>
public static class WireNames
{
    public static string Of(WireDirection direction) => direction == WireDirection.Ingress ? "ingress" : "egress";

    public static string Of(WireMatchKind kind) => kind switch
    {
        WireMatchKind.Any => "any",
        WireMatchKind.L3Only => "L3-only",
        WireMatchKind.L4Only => "L4-only",
        WireMatchKind.L3L4 => "L3+L4",
        WireMatchKind.Icmp => "ICMP",
        _ => "none",
    };
}
