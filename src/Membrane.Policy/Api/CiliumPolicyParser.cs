using Membrane.Policy.Labels;
using Membrane.Policy.Rules;
using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Api;

/// <summary>CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy → <see cref="PolicySpec"/>s.</summary>
internal sealed class CiliumPolicyParser(ParseContext ctx, PolicyOrigin origin)
{
    public const int MaxIcmpFields = 40;

    private static readonly HashSet<string> Entities = new(StringComparer.Ordinal)
    {
        "all", "world", "world-ipv4", "world-ipv6", "cluster", "host", "remote-node", "kube-apiserver", "health",
        "init", "ingress", "unmanaged",
    };

    private bool Namespaced => origin.Namespace is not null;

    public PolicySpec? Spec(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        map.Unsupported("nodeSelector", "nodeSelector (host policy)");
        map.Unsupported("log", "rule logging (log)");
        var description = map.String("description");
        map.List("labels", (item, p) => RuleLabel(item, p));

        LabelSelector? subject = null;
        if (map.Take("endpointSelector") is { } selectorNode)
        {
            subject = SelectorParser.Parse(ctx, selectorNode, map.PathOf("endpointSelector"), LabelSource.Any);
        }
        else if (!map.Has("nodeSelector"))
        {
            ctx.Error(map.PathOf("endpointSelector"), node, "is required");
        }
        if (subject is not null && Namespaced)
        {
            subject = subject.And(LabelSelector.Equal(LabelSource.Kubernetes, WellKnownLabels.PodNamespace, origin.Namespace!));
        }

        var defaultDeny = new Dictionary<TrafficDirection, bool>();
        if (MapReader.Of(ctx, map.Take("enableDefaultDeny"), map.PathOf("enableDefaultDeny")) is { } dd)
        {
            if (dd.Bool("ingress") is { } i)
            {
                defaultDeny[TrafficDirection.Ingress] = i;
            }
            if (dd.Bool("egress") is { } e)
            {
                defaultDeny[TrafficDirection.Egress] = e;
            }
            dd.Finish();
        }

        var rules = new List<PolicyRule>();
        var enforces = new HashSet<TrafficDirection>();
        foreach (var (key, direction, action) in new[]
                 {
                     ("ingress", TrafficDirection.Ingress, RuleAction.Allow),
                     ("ingressDeny", TrafficDirection.Ingress, RuleAction.Deny),
                     ("egress", TrafficDirection.Egress, RuleAction.Allow),
                     ("egressDeny", TrafficDirection.Egress, RuleAction.Deny),
                 })
        {
            var list = map.List(key, (item, p) => Rule(item, p, direction, action));
            if (list is { Count: > 0 })
            {
                rules.AddRange(list);
                if (defaultDeny.GetValueOrDefault(direction, true))
                {
                    enforces.Add(direction);
                }
            }
        }
        map.Finish();
        return subject is null
            ? null
            : new PolicySpec
            {
                Origin = origin,
                Path = path,
                Subject = subject,
                Rules = rules,
                Enforces = enforces,
                Description = description
            };
    }

    private object? RuleLabel(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        map.String("key", required: true);
        map.String("value");
        map.String("source");
        map.Finish();
        return null;
    }

    private PolicyRule? Rule(YamlNode node, string path, TrafficDirection direction, RuleAction action)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var errorsBefore = ctx.ErrorCount;
        var ingress = direction == TrafficDirection.Ingress;
        var (from, requires, cidr, cidrSet, entities) = ingress
            ? ("fromEndpoints", "fromRequires", "fromCIDR", "fromCIDRSet", "fromEntities")
            : ("toEndpoints", "toRequires", "toCIDR", "toCIDRSet", "toEntities");
        if (ingress)
        {
            map.Unsupported("fromGroups", "fromGroups (cloud provider groups)");
            map.Unsupported("fromNodes", "fromNodes (node selectors)");
        }
        else
        {
            map.Unsupported("toServices", "toServices");
            map.Unsupported("toFQDNs", "toFQDNs (DNS-based rules)");
            map.Unsupported("toGroups", "toGroups (cloud provider groups)");
            map.Unsupported("toNodes", "toNodes (node selectors)");
        }
        map.Unsupported("authentication", "authentication (mutual auth)");

        var peers = new List<Peer>();
        var endpoints = map.List(from, (item, p) => PeerSelector(item, p));
        peers.AddRange((endpoints ?? []).Select(s => new EndpointPeer(s)));
        var requireList = map.List(requires, (item, p) => PeerSelector(item, p)) ?? [];
        var cidrs = map.List(cidr, (item, p) => CidrText(item, p)) ?? [];
        peers.AddRange(cidrs.Select(c => new CidrPeer(c!.Value, [], MatchesPods: false)));
        peers.AddRange(map.List(cidrSet, (item, p) => CidrSet(item, p)) ?? []);
        peers.AddRange(map.List(entities, (item, p) => Entity(item, p)) ?? []);

        var ports = map.List("toPorts", (item, p) => PortRule(item, p));
        var icmps = map.List("icmps", (item, p) => IcmpRule(item, p));
        if (ports is not null && icmps is not null && map.Has("toPorts") && map.Has("icmps"))
        {
            ctx.Error(path, node, "icmps and toPorts cannot be used in one rule; write them as two rules");
        }
        map.Finish();
        if (ctx.ErrorCount != errorsBefore)
        {
            return null;
        }
        var flatPorts = ports?.SelectMany(p => p).ToList();
        var flatIcmps = icmps?.SelectMany(i => i).ToList();
        return new PolicyRule
        {
            Origin = origin,
            Path = path,
            Direction = direction,
            Action = action,
            Peers = peers.Count > 0 ? peers : null,
            Ports = flatPorts,
            Icmps = flatIcmps,
            Requires = action == RuleAction.Allow ? requireList : [],
            AllowsNothing = peers.Count == 0 && flatPorts is null && flatIcmps is null,
        };
    }

    /// <summary>A peer selector; in a CNP, one without a namespace requirement is limited to the policy's namespace.</summary>
    private LabelSelector? PeerSelector(YamlNode node, string path)
    {
        var selector = SelectorParser.Parse(ctx, node, path, LabelSource.Any);
        if (selector is null || !Namespaced || selector.HasNamespaceRequirement
            || selector.Requirements.Any(r => r.Source == LabelSource.Reserved))
        {
            return selector;
        }
        return selector.And(LabelSelector.Equal(LabelSource.Kubernetes, WellKnownLabels.PodNamespace, origin.Namespace!));
    }

    private System.Net.IPNetwork? CidrText(YamlNode node, string path) => PortParsing.Cidr(ctx, node, path);

    private CidrPeer? CidrSet(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        map.Unsupported("cidrGroupRef", "cidrGroupRef");
        map.Unsupported("cidrGroupSelector", "cidrGroupSelector");
        var cidrNode = map.Take("cidr");
        if (cidrNode is null)
        {
            map.Finish();
            ctx.Error(map.PathOf("cidr"), node, "is required");
            return null;
        }
        var cidr = CidrText(cidrNode, map.PathOf("cidr"));
        var except = map.List("except", (item, p) => CidrText(item, p)) ?? [];
        map.Finish();
        return cidr is { } c ? Build(ctx, map, c, except.Select(e => e!.Value).ToList(), MatchesPods: false) : null;
    }

    internal static CidrPeer? Build(ParseContext ctx, MapReader map, System.Net.IPNetwork cidr, List<System.Net.IPNetwork> except,
        bool MatchesPods)
    {
        for (var i = 0; i < except.Count; i++)
        {
            if (!CidrPeer.Covers(cidr, except[i]))
            {
                ctx.Error(FieldPath.Index(map.PathOf("except"), i), map.Node, $"{except[i]} is not inside {cidr}");
                return null;
            }
        }
        return new CidrPeer(cidr, except, MatchesPods);
    }

    private EntityPeer? Entity(YamlNode node, string path)
    {
        var text = Yaml.AsString(ctx, node, path);
        if (text is null)
        {
            return null;
        }
        if (!Entities.Contains(text))
        {
            ctx.Error(path, node, $"\"{text}\" is not a known entity ({string.Join(", ", Entities.Order(StringComparer.Ordinal))})");
            return null;
        }
        return new EntityPeer(text);
    }

    private List<PortMatch>? PortRule(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        map.Unsupported("rules", "L7 rules (toPorts[].rules)");
        map.Unsupported("terminatingTLS", "TLS termination (terminatingTLS)");
        map.Unsupported("originatingTLS", "TLS origination (originatingTLS)");
        map.Unsupported("serverNames", "TLS server names (serverNames)");
        map.Unsupported("listener", "Envoy listeners (listener)");
        var ports = map.List("ports", (item, p) => Port(item, p));
        map.Finish();
        return ports is null || ports.Count == 0 ? [new PortMatch(PortProtocol.Any, 0, 0, null)] : ports;
    }

    private PortMatch? Port(YamlNode node, string path) => PortParsing.Read(ctx, node, path, defaultProtocol: "ANY", allowAny: true);

    private List<IcmpMatch>? IcmpRule(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var fieldsNode = map.Take("fields");
        map.Finish();
        if (fieldsNode is YamlSequenceNode seq && seq.Children.Count > MaxIcmpFields)
        {
            ctx.Error(map.PathOf("fields"), fieldsNode,
                $"has {seq.Children.Count} entries; at most {MaxIcmpFields} are allowed in one icmps entry");
            return null;
        }
        var fields = new List<IcmpMatch>();
        if (fieldsNode is null)
        {
            ctx.Error(map.PathOf("fields"), node, "is required (a list of {type, family})");
            return null;
        }
        if (fieldsNode is not YamlSequenceNode list)
        {
            ctx.Error(map.PathOf("fields"), fieldsNode, $"expected a list, found {MapReader.Describe(fieldsNode)}");
            return null;
        }
        if (list.Children.Count == 0)
        {
            ctx.Error(map.PathOf("fields"), fieldsNode, "must list at least one ICMP type");
            return null;
        }
        for (var i = 0; i < list.Children.Count; i++)
        {
            if (IcmpField(list.Children[i], FieldPath.Index(map.PathOf("fields"), i)) is { } f)
            {
                fields.Add(f);
            }
        }
        return fields;
    }

    private IcmpMatch? IcmpField(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var familyText = map.String("family") ?? "IPv4";
        var typeNode = map.Take("type");
        var codeNode = map.Take("code");
        map.Finish();
        IcmpFamily family;
        switch (familyText)
        {
            case "IPv4": family = IcmpFamily.IPv4; break;
            case "IPv6": family = IcmpFamily.IPv6; break;
            default:
                ctx.Error(map.PathOf("family"), node, $"\"{familyText}\" is not a valid family (IPv4 or IPv6)");
                return null;
        }
        if (typeNode is null)
        {
            ctx.Error(map.PathOf("type"), node, "is required");
            return null;
        }
        byte type;
        if (Yaml.TryInt(typeNode, out var number))
        {
            if (number is < 0 or > 255)
            {
                ctx.Error(map.PathOf("type"), typeNode, $"{number} is out of range for an ICMP type (0-255)");
                return null;
            }
            type = (byte)number;
        }
        else
        {
            var name = Yaml.AsString(ctx, typeNode, map.PathOf("type"));
            if (name is null)
            {
                return null;
            }
            if (!IcmpTypes.TryParse(family, name, out type))
            {
                var hint = IcmpTypes.IsNameOfOtherFamily(family, name)
                    ? $" (it is an {(family == IcmpFamily.IPv4 ? "IPv6" : "IPv4")} type: set family accordingly)"
                    : "";
                ctx.Error(map.PathOf("type"), typeNode, $"\"{name}\" is not an ICMP type of family {familyText}{hint}");
                return null;
            }
        }
        var code = Yaml.IntInRange(ctx, codeNode, map.PathOf("code"), 0, 255, "an ICMP code");
        if (codeNode is not null && code is null)
        {
            return null;
        }
        return new IcmpMatch(family, type, code is { } c ? (byte)c : null);
    }
}
