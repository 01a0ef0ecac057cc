namespace Membrane.Api;

/// <summary>
/// Which flows of the ring to show, in the terms of <c>membrane observe</c>: pods as NAMESPACE/POD, a verdict as the flow
/// gives it (DROPPED, FORWARDED, AUDIT; any case), a protocol (tcp, udp, sctp, icmp, icmpv6), an ICMP type, a port (source
/// or destination) and a time window. Null matches anything. Shared by <c>observe</c> and the web view.
/// </summary>
public sealed record FlowFilter(string? FromPod = null, string? ToPod = null, string? Namespace = null, string? Verdict = null,
    string? Protocol = null, int? IcmpType = null, int? Port = null, TimeSpan? Since = null)
{
    public bool Matches(Flow flow, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(flow);
        return (FromPod is null || PodOf(flow.Source) == FromPod)
            && (ToPod is null || PodOf(flow.Destination) == ToPod)
            && (Namespace is null || flow.Source.Namespace == Namespace || flow.Destination.Namespace == Namespace)
            && (Verdict is null || string.Equals(flow.Verdict, Verdict, StringComparison.OrdinalIgnoreCase))
            && (Protocol is null || string.Equals(ProtocolOf(flow), Protocol, StringComparison.OrdinalIgnoreCase))
            && (IcmpType is null || (flow.L4.IcmpV4 ?? flow.L4.IcmpV6)?.Type == IcmpType)
            && (Port is null || PortsOf(flow) is { } ports && (ports.SourcePort == Port || ports.DestinationPort == Port))
            && (Since is null || flow.Time >= now - Since);
    }

    /// <summary>NAMESPACE/POD of a flow's side, or null when it is no pod (world, host, a CIDR).</summary>
    public static string? PodOf(FlowEndpoint side)
    {
        ArgumentNullException.ThrowIfNull(side);
        return side.PodName is null ? null : $"{side.Namespace}/{side.PodName}";
    }

    public static FlowPorts? PortsOf(Flow flow)
    {
        ArgumentNullException.ThrowIfNull(flow);
        return flow.L4.Tcp ?? flow.L4.Udp ?? flow.L4.Sctp;
    }

    public static string ProtocolOf(Flow flow)
    {
        ArgumentNullException.ThrowIfNull(flow);
        return flow.L4.Tcp is not null ? "tcp" : flow.L4.Udp is not null ? "udp" : flow.L4.Sctp is not null ? "sctp"
            : flow.L4.IcmpV4 is not null ? "icmp" : flow.L4.IcmpV6 is not null ? "icmpv6" : "other";
    }
}
