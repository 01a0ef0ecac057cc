namespace Membrane.Policy.Rules;

/// <summary>ICMP and ICMPv6 type names accepted in policies, per family.</summary>
public static class IcmpTypes
{
    private static readonly (string Name, byte Type)[] V4 =
    [
        ("EchoReply", 0), ("DestinationUnreachable", 3), ("Redirect", 5), ("Echo", 8), ("EchoRequest", 8),
        ("RouterAdvertisement", 9), ("RouterSelection", 10), ("TimeExceeded", 11), ("ParameterProblem", 12),
        ("Timestamp", 13), ("TimestampReply", 14), ("Photuris", 40), ("ExtendedEchoRequest", 42),
        ("ExtendedEchoReply", 43),
    ];

    private static readonly (string Name, byte Type)[] V6 =
    [
        ("DestinationUnreachable", 1), ("PacketTooBig", 2), ("TimeExceeded", 3), ("ParameterProblem", 4),
        ("EchoRequest", 128), ("EchoReply", 129), ("MulticastListenerQuery", 130), ("MulticastListenerReport", 131),
        ("MulticastListenerDone", 132), ("RouterSolicitation", 133), ("RouterAdvertisement", 134),
        ("NeighborSolicitation", 135), ("NeighborAdvertisement", 136), ("RedirectMessage", 137),
        ("RouterRenumbering", 138), ("ICMPNodeInformationQuery", 139), ("ICMPNodeInformationResponse", 140),
        ("InverseNeighborDiscoverySolicitation", 141), ("InverseNeighborDiscoveryAdvertisement", 142),
        ("HomeAgentAddressDiscoveryRequest", 144), ("HomeAgentAddressDiscoveryReply", 145),
        ("MobilePrefixSolicitation", 146), ("MobilePrefixAdvertisement", 147),
        ("DuplicateAddressRequestCodeSuffix", 157), ("DuplicateAddressConfirmationCodeSuffix", 158),
        ("ExtendedEchoRequest", 160), ("ExtendedEchoReply", 161),
    ];

    private static (string Name, byte Type)[] Table(IcmpFamily family) => family == IcmpFamily.IPv4 ? V4 : V6;

    public static bool TryParse(IcmpFamily family, string name, out byte type)
    {
        foreach (var (n, t) in Table(family))
        {
            if (n == name)
            {
                type = t;
                return true;
            }
        }
        type = 0;
        return false;
    }

    /// <summary>True when the name exists in the other family's table only (for a more helpful error).</summary>
    public static bool IsNameOfOtherFamily(IcmpFamily family, string name) =>
        !TryParse(family, name, out _) && TryParse(family == IcmpFamily.IPv4 ? IcmpFamily.IPv6 : IcmpFamily.IPv4, name, out _);

    public static string? NameOf(IcmpFamily family, byte type)
    {
        foreach (var (n, t) in Table(family))
        {
            if (t == type && n != "Echo")
            {
                return n;
            }
        }
        return null;
    }

    public static string Describe(IcmpFamily family, byte type) =>
        NameOf(family, type) is { } name ? $"{type}({name})" : type.ToString(System.Globalization.CultureInfo.InvariantCulture);

    /// <summary>ICMPv6 router and neighbour solicitation/advertisement, which the datapath never subjects to policy (redirect, 137,
    /// is).</summary>
    public static bool IsNeighbourDiscovery(byte icmpv6Type) => icmpv6Type is >= 133 and <= 136;
}
