using System.Net;
using Membrane.Policy.Labels;

namespace Membrane.Policy.Rules;

public enum TrafficDirection
{
    Ingress,
    Egress,
}

public enum RuleAction
{
    Allow,
    Deny,
}

/// <summary>IANA protocol numbers used in map keys. Zero means "any protocol" (an L3-only entry).</summary>
public static class IpProtocol
{
    public const byte Any = 0;
    public const byte Icmp = 1;
    public const byte Tcp = 6;
    public const byte Udp = 17;
    public const byte IcmpV6 = 58;
    public const byte Sctp = 132;

    public static string Name(byte protocol) => protocol switch
    {
        Any => "ANY",
        Icmp => "ICMP",
        Tcp => "TCP",
        Udp => "UDP",
        IcmpV6 => "ICMPv6",
        Sctp => "SCTP",
        _ => protocol.ToString(System.Globalization.CultureInfo.InvariantCulture),
    };

    public static bool IsIcmp(byte protocol) => protocol is Icmp or IcmpV6;
}

/// <summary>The policy object a rule came from, printed as <c>Kind/namespace/name</c>.</summary>
public sealed record PolicyOrigin(string Kind, string? Namespace, string Name)
{
    public override string ToString() => Namespace is null ? $"{Kind}/{Name}" : $"{Kind}/{Namespace}/{Name}";
}

/// <summary>A peer of a rule. One rule's peers are ORed.</summary>
public abstract record Peer;

/// <summary>Endpoints whose identity labels match the selector (namespace scoping already applied).</summary>
public sealed record EndpointPeer(LabelSelector Selector) : Peer
{
    public override string ToString() => Selector.Canonical;
}

/// <summary>Addresses in <see cref="Cidr"/> but not in any of <see cref="Except"/>.</summary>
/// <param name="MatchesPods">KNP ipBlock also matches pod addresses (Kubernetes' expectation); Cilium CIDR rules do not.</param>
public sealed record CidrPeer(IPNetwork Cidr, IReadOnlyList<IPNetwork> Except, bool MatchesPods) : Peer
{
    public bool Contains(IPNetwork prefix) =>
        Covers(Cidr, prefix) && !Except.Any(e => Covers(e, prefix) || Covers(prefix, e) && prefix.PrefixLength == e.PrefixLength);

    public bool Contains(IPAddress address) => Cidr.Contains(address) && !Except.Any(e => e.Contains(address));

    /// <summary>True when <paramref name="inner"/> lies wholly inside <paramref name="outer"/>.</summary>
    public static bool Covers(IPNetwork outer, IPNetwork inner) =>
        outer.BaseAddress.AddressFamily == inner.BaseAddress.AddressFamily
        && inner.PrefixLength >= outer.PrefixLength && outer.Contains(inner.BaseAddress);

    public override string ToString() =>
        Except.Count == 0 ? Cidr.ToString() : $"{Cidr} except {string.Join(",", Except)}";
}

/// <summary>A named entity: world, cluster, host, all, …</summary>
public sealed record EntityPeer(string Entity) : Peer
{
    public override string ToString() => $"entity:{Entity}";
}

public enum PortProtocol
{
    Any,
    Tcp,
    Udp,
    Sctp,
}

/// <summary>A port, a range (<see cref="EndPort"/>), all ports (0) or a named port resolved on the destination pod.</summary>
public sealed record PortMatch(PortProtocol Protocol, int Port, int EndPort, string? Name)
{
    public IEnumerable<byte> Protocols => Protocol switch
    {
        PortProtocol.Tcp => [IpProtocol.Tcp],
        PortProtocol.Udp => [IpProtocol.Udp],
        PortProtocol.Sctp => [IpProtocol.Sctp],
        _ => [IpProtocol.Tcp, IpProtocol.Udp, IpProtocol.Sctp],
    };

    public override string ToString()
    {
        var port = Name ?? (Port == 0 ? "*" : EndPort > Port ? $"{Port}-{EndPort}"
            : Port.ToString(System.Globalization.CultureInfo.InvariantCulture));
        return $"{port}/{Protocol.ToString().ToUpperInvariant()}";
    }
}

public enum IcmpFamily
{
    IPv4,
    IPv6,
}

/// <summary>An ICMP type in a family, optionally one code. Type 0 is an ordinary type (EchoReply), never a wildcard.</summary>
public sealed record IcmpMatch(IcmpFamily Family, byte Type, byte? Code)
{
    public byte Protocol => Family == IcmpFamily.IPv4 ? IpProtocol.Icmp : IpProtocol.IcmpV6;

    public override string ToString() =>
        $"{IcmpTypes.Describe(Family, Type)}{(Code is { } c ? $" code {c}" : "")}/{(Family == IcmpFamily.IPv4 ? "ICMP" : "ICMPv6")}";
}

/// <summary>
/// One entry of an ingress/egress/ingressDeny/egressDeny list, normalised across CNP, CCNP and KNP.
/// Peers AND (ports OR icmps). No peers = every peer. Neither ports nor icmps = every protocol (L3-only).
/// </summary>
public sealed record PolicyRule
{
    public required PolicyOrigin Origin { get; init; }

    /// <summary>Field path of the rule inside its document, e.g. <c>spec.ingress[0]</c>.</summary>
    public required string Path { get; init; }

    public required TrafficDirection Direction { get; init; }

    public required RuleAction Action { get; init; }

    /// <summary>Null = every peer (no peer field given).</summary>
    public IReadOnlyList<Peer>? Peers { get; init; }

    public IReadOnlyList<PortMatch>? Ports { get; init; }

    public IReadOnlyList<IcmpMatch>? Icmps { get; init; }

    /// <summary><c>fromRequires</c>/<c>toRequires</c>: peers of every allow rule selecting the endpoint must also match these.</summary>
    public IReadOnlyList<LabelSelector> Requires { get; init; } = [];

    /// <summary>CNP <c>ingress: [{}]</c>: enforces the direction, allows nothing.</summary>
    public bool AllowsNothing { get; init; }

    public bool IsL3Only => Ports is null && Icmps is null;

    public string Reference => $"{Origin}: {Path}";
}

/// <summary>One rule block: a subject selector, its rules and the directions it puts into default deny.</summary>
public sealed record PolicySpec
{
    public required PolicyOrigin Origin { get; init; }

    public required string Path { get; init; }

    /// <summary>Selects the endpoints the spec applies to (namespace scoping already applied).</summary>
    public required LabelSelector Subject { get; init; }

    public required IReadOnlyList<PolicyRule> Rules { get; init; }

    /// <summary>Directions this spec enforces (puts into default deny) for the endpoints it selects.</summary>
    public required IReadOnlySet<TrafficDirection> Enforces { get; init; }

    public string? Description { get; init; }
}

/// <summary>A validated policy object: CNP, CCNP or KNP.</summary>
public sealed record PolicyDocument(PolicyOrigin Origin, string File, IReadOnlyList<PolicySpec> Specs)
{
    /// <summary>The object as YAML, for persistence and <c>policy get</c>.</summary>
    public string SourceYaml { get; init; } = "";

    public IEnumerable<PolicyRule> Rules => Specs.SelectMany(s => s.Rules);
}
