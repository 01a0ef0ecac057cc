namespace Membrane.Datapath.Tests;

/// <summary>
/// The Internet checksum (RFC 1071) of IPv4 headers, ICMP messages and the like: over a header whose checksum field is
/// zero it gives the field's value; over one that holds a correct checksum, 0. Shared with the agent's tests.
/// </summary>
internal static class InternetChecksum
{
    public static ushort Of(ReadOnlySpan<byte> data)
    {
        uint sum = 0;
        for (var i = 0; i < data.Length; i += 2)
        {
            sum += (uint)(data[i] << 8 | (i + 1 < data.Length ? data[i + 1] : 0));
        }
        while (sum >> 16 != 0)
        {
            sum = (sum & 0xffff) + (sum >> 16);
        }
        return (ushort)~sum;
    }
}
