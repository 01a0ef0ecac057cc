using System.Globalization;
using System.Net.Sockets;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Tracing;

/// <summary>Turns the user's flow description (protocol, port, ICMP type by number or name, family) into a request.</summary>
public static class FlowSpec
{
    /// <exception cref="ArgumentException">The description is incomplete or inconsistent; the message says how.</exception>
    public static TraceRequest Parse(string? from, string? to, string? protocolText, int? port, string? icmpTypeText, int? icmpCode,
        string? familyText)
    {
        if (string.IsNullOrEmpty(from) || string.IsNullOrEmpty(to))
        {
            throw new ArgumentException("--from and --to are required (NAMESPACE/POD)");
        }
        if (familyText is not null and not "ipv4" and not "ipv6")
        {
            throw new ArgumentException($"--family \"{familyText}\" must be ipv4 or ipv6");
        }
        var protocol = protocolText switch
        {
            "tcp" => IpProtocol.Tcp,
            "udp" => IpProtocol.Udp,
            "sctp" => IpProtocol.Sctp,
            "icmp" => familyText == "ipv6" ? IpProtocol.IcmpV6 : IpProtocol.Icmp,
            "icmpv6" => IpProtocol.IcmpV6,
            _ => throw new ArgumentException($"--protocol \"{protocolText}\" must be tcp, udp, sctp, icmp or icmpv6"),
        };
        if (protocolText == "icmpv6" && familyText == "ipv4")
        {
            throw new ArgumentException("--protocol icmpv6 needs --family ipv6");
        }
        var family = protocol == IpProtocol.IcmpV6 || familyText == "ipv6" ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork;
        if (IpProtocol.IsIcmp(protocol))
        {
            if (port is not null)
            {
                throw new ArgumentException("--port does not apply to ICMP; use --icmp-type");
            }
            var typeText = icmpTypeText ?? throw new ArgumentException("--icmp-type is required for ICMP");
            var icmpFamily = protocol == IpProtocol.Icmp ? IcmpFamily.IPv4 : IcmpFamily.IPv6;
            byte type;
            if (int.TryParse(typeText, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
            {
                type = number is >= 0 and <= 255 ? (byte)number
                    : throw new ArgumentException($"--icmp-type {number} is out of range (0-255)");
            }
            else if (!IcmpTypes.TryParse(icmpFamily, typeText, out type))
            {
                throw new ArgumentException($"--icmp-type \"{typeText}\" is not an ICMP type of family {icmpFamily}");
            }
            if (icmpCode is < 0 or > 255)
            {
                throw new ArgumentException($"--icmp-code {icmpCode} is out of range (0-255)");
            }
            return new TraceRequest(from, to, protocol, 0, type, icmpCode is { } c ? (byte)c : null, family);
        }
        if (icmpTypeText is not null || icmpCode is not null)
        {
            throw new ArgumentException("--icmp-type and --icmp-code apply only to --protocol icmp or icmpv6");
        }
        var p = port ?? throw new ArgumentException($"--port is required for {protocolText}");
        if (p is < 1 or > 65535)
        {
            throw new ArgumentException($"--port {p} is out of range (1-65535)");
        }
        return new TraceRequest(from, to, protocol, (ushort)p, 0, null, family);
    }
}
