using Membrane.Policy.Identity;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Resolution;

/// <summary>
/// One policy-map key, the same shape as the datapath's LPM key: direction and peer identity always exact, then
/// protocol, then the 16-bit port field with a prefix length. Identity 0 = any peer; protocol 0 = any protocol
/// (an L3-only entry). For ICMP the port field is <c>type &lt;&lt; 8 | code</c>: prefix 8 = one type, any code;
/// prefix 16 = one type and code; prefix 0 = any ICMP type. Type 0 is an ordinary value, never a wildcard.
/// </summary>
public readonly record struct PolicyKey(TrafficDirection Direction, uint Identity, byte Protocol, ushort Port, byte PortPrefixLength)
{
    public static PolicyKey Create(TrafficDirection direction, uint identity, byte protocol, ushort port, byte prefix)
    {
        if (protocol == IpProtocol.Any)
        {
            return new(direction, identity, 0, 0, 0);
        }
        return new(direction, identity, protocol, (ushort)(port & Mask(prefix)), prefix);
    }

    public static ushort Mask(byte prefix) => prefix == 0 ? (ushort)0 : (ushort)(0xFFFF << (16 - prefix));

    /// <summary>True when every packet this key matches is also matched by <paramref name="other"/>.</summary>
    public bool IsCoveredBy(PolicyKey other) =>
        other.Direction == Direction && other.Identity == Identity
        && (other.Protocol == IpProtocol.Any
            || other.Protocol == Protocol && other.PortPrefixLength <= PortPrefixLength
               && (Port & Mask(other.PortPrefixLength)) == other.Port);

    public bool Matches(uint identity, byte protocol, ushort port) =>
        Identity == identity && (Protocol == IpProtocol.Any || Protocol == protocol && (port & Mask(PortPrefixLength)) == Port);

    public MatchKind Kind =>
        IpProtocol.IsIcmp(Protocol) ? MatchKind.Icmp
        : Identity == ReservedIdentities.Any && Protocol == IpProtocol.Any ? MatchKind.Any
        : Protocol == IpProtocol.Any ? MatchKind.L3Only
        : Identity == ReservedIdentities.Any ? MatchKind.L4Only
        : MatchKind.L3L4;

    /// <summary><c>80/TCP</c>, <c>80-95/TCP</c>, <c>8/ICMP</c>, <c>3:4/ICMP</c> (type:code), <c>ANY</c>.</summary>
    public string PortProtocol
    {
        get
        {
            if (Protocol == IpProtocol.Any)
            {
                return "ANY";
            }
            var name = IpProtocol.Name(Protocol);
            if (IpProtocol.IsIcmp(Protocol))
            {
                return PortPrefixLength switch
                {
                    0 => name,
                    < 16 => $"{Port >> 8}/{name}",
                    _ => $"{Port >> 8}:{Port & 0xff}/{name}",
                };
            }
            if (PortPrefixLength == 0)
            {
                return name;
            }
            var last = Port | (ushort)~Mask(PortPrefixLength);
            return PortPrefixLength == 16 ? $"{Port}/{name}" : $"{Port}-{last}/{name}";
        }
    }

    public override string ToString() => $"{Direction} id={Identity} {PortProtocol}";
}

public enum MatchKind
{
    /// <summary>Any peer, any protocol (unenforced direction or an allow-all rule).</summary>
    Any,
    L3Only,
    L4Only,
    L3L4,
    Icmp,
}

/// <summary>A map entry: the verdict and the rules that produced it (for trace and <c>bpf policy get</c>).</summary>
public sealed record PolicyEntry(RuleAction Verdict, IReadOnlyList<string> DerivedFrom)
{
    public bool IsDeny => Verdict == RuleAction.Deny;
}

/// <summary>The result of looking a packet up in a map state.</summary>
public sealed record LookupResult(bool Allowed, PolicyKey? Key, PolicyEntry? Entry, string Reason);

/// <summary>
/// The resolved policy of one endpoint: exactly what the datapath's policy map holds. <see cref="Lookup"/> is the
/// datapath's algorithm in C#: the longest match for the peer's identity and the longest match for any peer; a deny
/// in either wins, else an allow in either allows, else the packet is dropped (default deny).
/// </summary>
public sealed class MapState
{
    private readonly Dictionary<PolicyKey, PolicyEntry> _entries;

    public MapState(Dictionary<PolicyKey, PolicyEntry> entries) => _entries = entries;

    public IReadOnlyDictionary<PolicyKey, PolicyEntry> Entries => _entries;

    public int Count => _entries.Count;

    public LookupResult Lookup(TrafficDirection direction, uint peerIdentity, byte protocol, ushort port)
    {
        var specific = peerIdentity == ReservedIdentities.Any ? null : Longest(direction, peerIdentity, protocol, port);
        var wildcard = Longest(direction, ReservedIdentities.Any, protocol, port);
        foreach (var hit in new[] { specific, wildcard })
        {
            if (hit is { } h && h.Value.IsDeny)
            {
                return new LookupResult(false, h.Key, h.Value, "Policy denied by denylist");
            }
        }
        foreach (var hit in new[] { specific, wildcard })
        {
            if (hit is { } h)
            {
                return new LookupResult(true, h.Key, h.Value, "Policy allowed");
            }
        }
        return new LookupResult(false, null, null, "Policy denied (no rule allows it)");
    }

    private KeyValuePair<PolicyKey, PolicyEntry>? Longest(TrafficDirection direction, uint identity, byte protocol, ushort port)
    {
        if (protocol != IpProtocol.Any)
        {
            for (var prefix = 16; prefix >= 0; prefix--)
            {
                var key = PolicyKey.Create(direction, identity, protocol, port, (byte)prefix);
                if (_entries.TryGetValue(key, out var entry))
                {
                    return new(key, entry);
                }
            }
        }
        var l3 = PolicyKey.Create(direction, identity, IpProtocol.Any, 0, 0);
        return _entries.TryGetValue(l3, out var l3Entry) ? new(l3, l3Entry) : null;
    }

    /// <summary>Splits an inclusive port range into the fewest prefix-aligned blocks.</summary>
    public static IEnumerable<(ushort Port, byte Prefix)> RangeToPrefixes(int first, int last)
    {
        var start = first;
        while (start <= last)
        {
            var size = 0;
            while (size < 16 && (start & ((1 << (size + 1)) - 1)) == 0 && start + (1 << (size + 1)) - 1 <= last)
            {
                size++;
            }
            yield return ((ushort)start, (byte)(16 - size));
            start += 1 << size;
        }
    }
}
