using System.Net;
using System.Text.RegularExpressions;

namespace Membrane.Policy.Api;

/// <summary>Kubernetes name and label syntax, CIDR parsing.</summary>
internal static partial class Names
{
    [GeneratedRegex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    private static partial Regex DnsLabel();

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")]
    private static partial Regex DnsSubdomain();

    [GeneratedRegex("^([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9]$")]
    private static partial Regex QualifiedName();

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")]
    private static partial Regex ServiceName();

    public static string? CheckDnsLabel(string name) =>
        name.Length is > 0 and <= 63 && DnsLabel().IsMatch(name)
            ? null
            : $"\"{name}\" is not a valid name (lowercase letters, digits and '-', at most 63 characters)";

    public static string? CheckObjectName(string name) =>
        name.Length is > 0 and <= 253 && DnsSubdomain().IsMatch(name)
            ? null
            : $"\"{name}\" is not a valid name (lowercase letters, digits, '-' and '.', at most 253 characters)";

    /// <summary>A label key: optional DNS-subdomain prefix and '/', then a name of at most 63 characters.</summary>
    public static string? CheckLabelKey(string key)
    {
        var slash = key.LastIndexOf('/');
        var name = slash < 0 ? key : key[(slash + 1)..];
        var prefix = slash < 0 ? null : key[..slash];
        if (prefix is not null && (prefix.Length > 253 || !DnsSubdomain().IsMatch(prefix)))
        {
            return $"\"{key}\" is not a valid label key (bad prefix \"{prefix}\")";
        }
        return name.Length is > 0 and <= 63 && QualifiedName().IsMatch(name)
            ? null
            : $"\"{key}\" is not a valid label key (letters, digits, '-', '_' and '.', at most 63 characters)";
    }

    public static string? CheckLabelValue(string value) =>
        value.Length == 0 || value.Length <= 63 && QualifiedName().IsMatch(value)
            ? null
            : $"\"{value}\" is not a valid label value (letters, digits, '-', '_' and '.', at most 63 characters)";

    /// <summary>IANA service name, as container port names and named ports must be.</summary>
    public static bool IsPortName(string name) =>
        name.Length is > 0 and <= 15 && ServiceName().IsMatch(name) && name.Any(char.IsAsciiLetter) && !name.Contains("--",
            StringComparison.Ordinal);

    /// <summary>Parses <c>10.0.0.0/8</c>, <c>fd00::/64</c> or a bare address (a host prefix); host bits are masked.</summary>
    public static bool TryParseCidr(string text, out IPNetwork network)
    {
        network = default;
        var slash = text.IndexOf('/', StringComparison.Ordinal);
        var addressText = slash < 0 ? text : text[..slash];
        if (!IPAddress.TryParse(addressText, out var address) || addressText.Contains('%', StringComparison.Ordinal))
        {
            return false;
        }
        var max = address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork ? 32 : 128;
        var length = max;
        if (slash >= 0 && (!int.TryParse(text[(slash + 1)..], System.Globalization.NumberStyles.None,
            System.Globalization.CultureInfo.InvariantCulture, out length) || length > max))
        {
            return false;
        }
        var bytes = address.GetAddressBytes();
        for (var bit = length; bit < max; bit++)
        {
            bytes[bit / 8] &= (byte)~(0x80 >> (bit % 8));
        }
        network = new IPNetwork(new IPAddress(bytes), length);
        return true;
    }
}
