using System.Net.Sockets;
using Membrane.Api;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Tracing;

/// <summary>Trace results in the API's JSON shape (the agent's answer and the CLI's <c>-o json</c>).</summary>
public static class TraceJson
{
    public static TraceOutput From(TraceResult r)
    {
        ArgumentNullException.ThrowIfNull(r);
        static TraceSideOutput Side(DirectionTrace s) => new(s.Direction.ToString().ToLowerInvariant(), s.Endpoint, s.PeerIdentity,
            s.Enforced, s.SelectingPolicies, s.Allowed ? "ALLOWED" : "DENIED", s.Reason, s.MatchedKey, s.MatchKind, s.Rules);
        var q = r.Request;
        return new TraceOutput(q.From, q.To, IpProtocol.Name(q.Protocol).ToLowerInvariant(), q.IsIcmp ? null : q.Port,
            q.IsIcmp ? q.IcmpType : null, q.IcmpCode, q.Family == AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4",
            r.SourceIdentity, r.DestinationIdentity, Side(r.Egress), Side(r.Ingress), r.Verdict);
    }
}
