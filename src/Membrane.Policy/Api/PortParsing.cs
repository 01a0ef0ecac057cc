using Membrane.Policy.Labels;
using Membrane.Policy.Rules;
using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Api;

/// <summary>Port, protocol and CIDR parsing shared by the Cilium and Kubernetes parsers.</summary>
internal static class PortParsing
{
    public static PortMatch? Read(ParseContext ctx, YamlNode node, string path, string defaultProtocol, bool allowAny)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var portNode = map.Take("port");
        var endNode = map.Take("endPort");
        var protocolText = map.String("protocol") ?? defaultProtocol;
        map.Finish();
        return Port(ctx, map, portNode, endNode, protocolText, allowAny);
    }

    public static System.Net.IPNetwork? Cidr(ParseContext ctx, YamlNode node, string path)
    {
        var text = Yaml.AsString(ctx, node, path);
        if (text is null)
        {
            return null;
        }
        if (!Names.TryParseCidr(text, out var network))
        {
            ctx.Error(path, node, $"\"{text}\" is not a valid CIDR");
            return null;
        }
        return network;
    }

    public static PortMatch? Port(ParseContext ctx, MapReader map, YamlNode? portNode, YamlNode? endNode, string protocolText,
        bool allowAny)
    {
        PortProtocol? protocol = protocolText switch
        {
            "TCP" => PortProtocol.Tcp,
            "UDP" => PortProtocol.Udp,
            "SCTP" => PortProtocol.Sctp,
            "ANY" when allowAny => PortProtocol.Any,
            _ => null,
        };
        if (protocol is null)
        {
            var hint = protocolText.StartsWith("ICMP", StringComparison.OrdinalIgnoreCase) ? "; ICMP is matched with icmps, not toPorts"
                : "";
            ctx.Error(map.PathOf("protocol"), map.Node,
                $"\"{protocolText}\" is not a valid protocol ({(allowAny ? "TCP, UDP, SCTP or ANY" : "TCP, UDP or SCTP")}){hint}");
            return null;
        }
        var port = 0;
        string? name = null;
        if (portNode is not null)
        {
            if (Yaml.TryInt(portNode, out var number))
            {
                if (number is < 0 or > 65535)
                {
                    ctx.Error(map.PathOf("port"), portNode, $"{number} is out of range for a port (0-65535)");
                    return null;
                }
                port = (int)number;
            }
            else
            {
                var text = Yaml.AsString(ctx, portNode, map.PathOf("port"));
                if (text is null)
                {
                    return null;
                }
                if (!Names.IsPortName(text))
                {
                    ctx.Error(map.PathOf("port"), portNode,
                        $"\"{text}\" is neither a port number (0-65535) nor a valid port name (at most 15 lowercase letters, digits and " +
                            $"'-')");
                    return null;
                }
                name = text;
            }
        }
        var end = Yaml.IntInRange(ctx, endNode, map.PathOf("endPort"), 0, 65535, "a port");
        if (endNode is not null && end is null)
        {
            return null;
        }
        if (end is { } e && e != 0)
        {
            if (name is not null || port == 0)
            {
                ctx.Error(map.PathOf("endPort"), endNode, "needs a numeric port to start the range");
                return null;
            }
            if (e < port)
            {
                ctx.Error(map.PathOf("endPort"), endNode, $"{e} is below port {port}");
                return null;
            }
        }
        return new PortMatch(protocol.Value, port, end ?? 0, name);
    }
}
