using System.Globalization;
using Membrane.Api;

namespace Membrane.Ui;

/// <summary>
/// One row of a pod's resolved policy as the kernel holds it: the peer (identity and labels), what (protocol and port, or
/// ICMP type and code by name), allow or deny, the entry's own packet and byte counters, and the policy rules it comes from.
/// </summary>
public sealed record PolicyRowView(string Direction, uint Identity, string Peer, string What, string Verdict, string MatchKind,
    ulong Packets, ulong Bytes, string DerivedFrom);

/// <summary>Who may reach a pod and whom it may reach, and whether each direction is enforced or open (audit mode too).</summary>
public sealed record PodPolicyView(EndpointOutput Endpoint, bool IngressEnforced, bool EgressEnforced, bool Audit,
    IReadOnlyList<PolicyRowView> Ingress, IReadOnlyList<PolicyRowView> Egress);

public static class PodPolicy
{
    public static PodPolicyView From(EndpointOutput endpoint, BpfPolicyOutput map, bool agentAudit)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        ArgumentNullException.ThrowIfNull(map);
        List<PolicyRowView> Rows(string direction) => map.Entries
            .Where(e => string.Equals(e.Direction, direction, StringComparison.OrdinalIgnoreCase))
            .Select(e => new PolicyRowView(direction.ToLowerInvariant(), e.Identity, e.Identity == 0 ? "any peer" : e.Labels,
                Describe(e.PortProtocol), e.Verdict, e.MatchKind, e.Packets, e.Bytes, e.DerivedFrom))
            .ToList();
        return new PodPolicyView(endpoint, endpoint.IngressEnforced, endpoint.EgressEnforced, endpoint.PolicyAudit || agentAudit,
            Rows("Ingress"), Rows("Egress"));
    }

    /// <summary>The map's port/protocol with ICMP types by name: <c>8/ICMP</c> → <c>ICMP EchoRequest (8)</c>.</summary>
    public static string Describe(string portProtocol)
    {
        ArgumentNullException.ThrowIfNull(portProtocol);
        var slash = portProtocol.LastIndexOf('/');
        if (slash < 0)
        {
            return portProtocol;
        }
        var protocol = portProtocol[(slash + 1)..];
        if (!protocol.StartsWith("ICMP", StringComparison.OrdinalIgnoreCase))
        {
            return portProtocol;
        }
        var parts = portProtocol[..slash].Split(':');
        if (!byte.TryParse(parts[0], NumberStyles.None, CultureInfo.InvariantCulture, out var type))
        {
            return portProtocol;
        }
        var name = FlowGraph.IcmpName(protocol.Equals("ICMPv6", StringComparison.OrdinalIgnoreCase) ? "icmpv6" : "icmp", type);
        return $"{protocol} {name} ({type}){(parts.Length > 1 ? $" code {parts[1]}" : "")}";
    }
}
