using System.Net;

namespace Membrane.Agent.Ipam;

/// <summary>Hands out pod addresses from an IPv4 and an IPv6 range, skipping those in use.</summary>
public sealed class PodAddressAllocator(IPNetwork v4Range, IPNetwork v6Range)
{
    public static IPNetwork DefaultIPv4Range { get; } = IPNetwork.Parse("10.200.0.0/16");
    public static IPNetwork DefaultIPv6Range { get; } = IPNetwork.Parse("fd00:200::/64");

    private readonly HashSet<IPAddress> _used = [];

    public PodAddressAllocator() : this(DefaultIPv4Range, DefaultIPv6Range)
    {
    }

    public IPNetwork IPv4Range => v4Range;

    public IPNetwork IPv6Range => v6Range;

    public void Reserve(IPAddress address) => _used.Add(address);

    public void Release(IPAddress address) => _used.Remove(address);

    public IReadOnlyList<IPAddress> Allocate() => [Next(v4Range), Next(v6Range)];

    private readonly Dictionary<IPNetwork, int> _cursor = [];

    /// <summary>The next free host number after the last one handed out (wrapping once), so allocation is O(1) amortised.</summary>
    private IPAddress Next(IPNetwork range)
    {
        var bytes = range.BaseAddress.GetAddressBytes();
        // Host numbers from 2 (1 is the gateway on the host side) to the size of the range or 65,535.
        var hostBits = bytes.Length * 8 - range.PrefixLength;
        var limit = hostBits >= 16 ? 65_535 : (1 << hostBits) - 2;
        var start = _cursor.GetValueOrDefault(range, 2);
        for (var i = 0; i <= limit - 2; i++)
        {
            var n = 2 + (start - 2 + i) % (limit - 1);
            var candidate = (byte[])bytes.Clone();
            candidate[^1] = (byte)(bytes[^1] | (n & 0xff));
            candidate[^2] = (byte)(bytes[^2] | (n >> 8));
            var address = new IPAddress(candidate);
            if (_used.Add(address))
            {
                _cursor[range] = n + 1;
                return address;
            }
        }
        throw new InvalidOperationException($"the pod range {range} is exhausted");
    }

    /// <summary>The host-side gateway address of a range (its first host address).</summary>
    public static IPAddress Gateway(IPNetwork range)
    {
        var bytes = range.BaseAddress.GetAddressBytes();
        bytes[^1] |= 1;
        return new IPAddress(bytes);
    }
}
