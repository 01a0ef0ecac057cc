using System.Globalization;
using System.Text;
using Membrane.Policy.Rules;

namespace Membrane.TestSupport;

/// <summary>Generates random but valid CNP/CCNP YAML over the test cluster's labels, ports and ICMP types.</summary>
public sealed class RandomPolicies(int seed)
{
    private readonly Random _random = new(seed);
    private static readonly string[] Apps = ["client", "server", "other", "nobody"];
    private static readonly int[] Ports = [53, 80, 443, 8080];
    private static readonly (string Family, int Type)[] IcmpTypes = [("IPv4", 0), ("IPv4", 8), ("IPv4", 3), ("IPv4", 13), ("IPv6", 128),
        ("IPv6", 129), ("IPv6", 1)];

    public static readonly (byte Protocol, ushort Port, byte Type, byte? Code)[] Flows =
    [
        (IpProtocol.Tcp, 80, 0, null), (IpProtocol.Tcp, 443, 0, null), (IpProtocol.Tcp, 22, 0, null), (IpProtocol.Tcp, 8080, 0, null),
        (IpProtocol.Udp, 53, 0, null), (IpProtocol.Udp, 80, 0, null), (IpProtocol.Sctp, 80, 0, null),
        (IpProtocol.Icmp, 0, 8, 0), (IpProtocol.Icmp, 0, 0, 0), (IpProtocol.Icmp, 0, 3, 4), (IpProtocol.Icmp, 0, 3, 1), (IpProtocol.Icmp,
            0, 13, 0),
        (IpProtocol.IcmpV6, 0, 128, 0), (IpProtocol.IcmpV6, 0, 129, 0), (IpProtocol.IcmpV6, 0, 1, 4), (IpProtocol.IcmpV6, 0, 2, 0),
        (IpProtocol.IcmpV6, 0, 135, 0), (IpProtocol.IcmpV6, 0, 136, 0), (IpProtocol.IcmpV6, 0, 137, 0),
    ];

    public static readonly string[] Pods = ["a/client", "a/server", "b/client", "b/other"];

    public int Next(int max) => _random.Next(max);

    public string Generate()
    {
        var text = new StringBuilder();
        var count = 1 + _random.Next(4);
        for (var i = 0; i < count; i++)
        {
            var clusterwide = _random.Next(3) == 0;
            var ns = _random.Next(2) == 0 ? "a" : "b";
            text.Append(clusterwide
                ? $"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: p{i}}}\nspec:\n"
                : $"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: {ns}}}\nspec:\n");
            text.Append(CultureInfo.InvariantCulture, $"  endpointSelector: {Selector(allowEmpty: true)}\n");
            if (_random.Next(5) == 0)
            {
                text.Append(CultureInfo.InvariantCulture, $"  enableDefaultDeny: {{ingress: {Bool()}, egress: {Bool()}}}\n");
            }
            foreach (var list in new[] { "ingress", "ingressDeny", "egress", "egressDeny" })
            {
                if (_random.Next(3) != 0)
                {
                    continue;
                }
                text.Append(CultureInfo.InvariantCulture, $"  {list}:\n");
                var rules = 1 + _random.Next(2);
                for (var r = 0; r < rules; r++)
                {
                    text.Append(Rule(list.StartsWith("ingress", StringComparison.Ordinal)));
                }
            }
            text.Append("---\n");
        }
        return text.ToString();
    }

    private string Bool() => _random.Next(2) == 0 ? "true" : "false";

    private string Selector(bool allowEmpty)
    {
        var choice = _random.Next(allowEmpty ? 5 : 4);
        return choice switch
        {
            0 => $"{{matchLabels: {{app: {Apps[_random.Next(Apps.Length)]}}}}}",
            1 => $"{{matchExpressions: [{{key: app, operator: In, values: [{Apps[_random.Next(Apps.Length)]}, " +
                $"{Apps[_random.Next(Apps.Length)]}]}}]}}",
            2 => $"{{matchLabels: {{io.kubernetes.pod.namespace: {(_random.Next(2) == 0 ? "a" : "b")}}}}}",
            3 => $"{{matchExpressions: [{{key: app, operator: NotIn, values: [{Apps[_random.Next(Apps.Length)]}]}}]}}",
            _ => "{}",
        };
    }

    private string Rule(bool ingress)
    {
        var sb = new StringBuilder("  - {");
        var parts = new List<string>();
        var peer = _random.Next(4);
        if (peer == 1)
        {
            parts.Add($"{(ingress ? "fromEndpoints" : "toEndpoints")}: [{Selector(allowEmpty: true)}]");
        }
        else if (peer == 2)
        {
            parts.Add($"{(ingress ? "fromEntities" : "toEntities")}: [{(_random.Next(2) == 0 ? "cluster" : "all")}]");
        }
        else if (peer == 3)
        {
            parts.Add($"{(ingress ? "fromEndpoints" : "toEndpoints")}: [{Selector(allowEmpty: false)}, {Selector(allowEmpty: false)}]");
        }
        var l4 = _random.Next(3);
        if (l4 == 1)
        {
            var ports = new List<string>();
            for (var i = 0; i <= _random.Next(2); i++)
            {
                var protocol = new[] { "TCP", "UDP", "ANY", "SCTP" }[_random.Next(4)];
                var port = _random.Next(6) switch
                {
                    0 => "\"0\"",
                    1 => "http",
                    2 => "dns",
                    _ => $"\"{Ports[_random.Next(Ports.Length)]}\"",
                };
                var end = port.StartsWith("\"8", StringComparison.Ordinal) && _random.Next(3) == 0 ? ", endPort: 8090" : "";
                ports.Add($"{{port: {port}, protocol: {protocol}{end}}}");
            }
            parts.Add($"toPorts: [{{ports: [{string.Join(", ", ports)}]}}]");
        }
        else if (l4 == 2)
        {
            var fields = new List<string>();
            for (var i = 0; i <= _random.Next(3); i++)
            {
                var (family, type) = IcmpTypes[_random.Next(IcmpTypes.Length)];
                var code = _random.Next(3) == 0 ? $", code: {(_random.Next(2) == 0 ? 4 : 0)}" : "";
                fields.Add($"{{type: {type}, family: {family}{code}}}");
            }
            parts.Add($"icmps: [{{fields: [{string.Join(", ", fields)}]}}]");
        }
        sb.Append(string.Join(", ", parts)).Append("}\n");
        return sb.ToString();
    }
}
