using Membrane.Policy.Labels;
using Membrane.Policy.Rules;
using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Api;

/// <summary>networking.k8s.io/v1 NetworkPolicy → one <see cref="PolicySpec"/> with Kubernetes semantics.</summary>
internal sealed class KubernetesPolicyParser(ParseContext ctx, PolicyOrigin origin)
{
    private string Namespace => origin.Namespace!;

    public PolicySpec? Spec(YamlNode? node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var errorsBefore = ctx.ErrorCount;
        LabelSelector? subject = null;
        if (map.Take("podSelector") is { } podSelector)
        {
            subject = SelectorParser.Parse(ctx, podSelector, map.PathOf("podSelector"), LabelSource.Kubernetes);
        }
        else if (map.Has("podSelector") || map.Keys.Contains("podSelector"))
        {
            subject = LabelSelector.All; // `podSelector: {}` written as null
        }
        else
        {
            ctx.Error(map.PathOf("podSelector"), map.Node, "is required (use {} to select every pod of the namespace)");
        }
        subject = subject?.And(LabelSelector.Equal(LabelSource.Kubernetes, WellKnownLabels.PodNamespace, Namespace));

        var types = map.List("policyTypes", (item, p) => PolicyType(item, p));
        var ingress = map.List("ingress", (item, p) => Rule(item, p, TrafficDirection.Ingress));
        var egress = map.List("egress", (item, p) => Rule(item, p, TrafficDirection.Egress));
        map.Finish();

        var enforces = new HashSet<TrafficDirection>();
        if (types is not null)
        {
            enforces.UnionWith(types.Select(t => t!.Value));
        }
        else
        {
            enforces.Add(TrafficDirection.Ingress);
            if (egress is { Count: > 0 })
            {
                enforces.Add(TrafficDirection.Egress);
            }
        }
        if (ctx.ErrorCount != errorsBefore || subject is null)
        {
            return null;
        }
        // Rules of a direction the policy does not enforce are ignored, as Kubernetes does.
        var rules = (ingress ?? []).Where(_ => enforces.Contains(TrafficDirection.Ingress))
            .Concat((egress ?? []).Where(_ => enforces.Contains(TrafficDirection.Egress)))
            .Select(r => r!).ToList();
        return new PolicySpec { Origin = origin, Path = path, Subject = subject, Rules = rules, Enforces = enforces };
    }

    private TrafficDirection? PolicyType(YamlNode node, string path)
    {
        var text = Yaml.AsString(ctx, node, path);
        switch (text)
        {
            case "Ingress": return TrafficDirection.Ingress;
            case "Egress": return TrafficDirection.Egress;
            case null: return null;
            default:
                ctx.Error(path, node, $"\"{text}\" is not a valid policy type (Ingress or Egress)");
                return null;
        }
    }

    private PolicyRule? Rule(YamlNode node, string path, TrafficDirection direction)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var peersKey = direction == TrafficDirection.Ingress ? "from" : "to";
        var peers = map.List(peersKey, (item, p) => Peer(item, p));
        var ports = map.List("ports", (item, p) => Port(item, p));
        map.Finish();
        return new PolicyRule
        {
            Origin = origin,
            Path = path,
            Direction = direction,
            Action = RuleAction.Allow,
            Peers = peers is { Count: > 0 } ? peers.Select(p => p!).ToList() : null,
            Ports = ports is { Count: > 0 } ? ports.Select(p => p!).ToList() : null,
        };
    }

    private Peer? Peer(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var podNode = map.Take("podSelector");
        var nsNode = map.Take("namespaceSelector");
        var ipBlockNode = map.Take("ipBlock");
        var hasPod = map.Keys.Contains("podSelector");
        var hasNs = map.Keys.Contains("namespaceSelector");
        map.Finish();
        if (ipBlockNode is not null)
        {
            if (hasPod || hasNs)
            {
                ctx.Error(path, node, "ipBlock cannot be combined with podSelector or namespaceSelector");
                return null;
            }
            return IpBlock(ipBlockNode, map.PathOf("ipBlock"));
        }
        if (!hasPod && !hasNs)
        {
            ctx.Error(path, node, "a peer must have podSelector, namespaceSelector or ipBlock");
            return null;
        }
        var selector = LabelSelector.All;
        if (podNode is not null)
        {
            var pod = SelectorParser.Parse(ctx, podNode, map.PathOf("podSelector"), LabelSource.Kubernetes);
            if (pod is null)
            {
                return null;
            }
            selector = selector.And(pod);
        }
        if (hasNs)
        {
            var ns = nsNode is null
                ? LabelSelector.All
                : SelectorParser.Parse(ctx, nsNode, map.PathOf("namespaceSelector"), LabelSource.Kubernetes,
                    WellKnownLabels.NamespaceLabelPrefix);
            if (ns is null)
            {
                return null;
            }
            // Any pod of the matching namespaces: require the pod-namespace label so reserved identities never match.
            selector = selector.And(ns).And(new SelectorRequirement(LabelSource.Kubernetes, WellKnownLabels.PodNamespace,
                SelectorOperator.Exists, []));
        }
        else
        {
            selector = selector.And(LabelSelector.Equal(LabelSource.Kubernetes, WellKnownLabels.PodNamespace, Namespace));
        }
        return new EndpointPeer(selector);
    }

    private CidrPeer? IpBlock(YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        var cidrText = map.String("cidr", required: true);
        var except = map.List("except", (item, p) => PortParsing.Cidr(ctx, item, p)) ?? [];
        map.Finish();
        if (cidrText is null)
        {
            return null;
        }
        if (!Names.TryParseCidr(cidrText, out var cidr))
        {
            ctx.Error(map.PathOf("cidr"), node, $"\"{cidrText}\" is not a valid CIDR");
            return null;
        }
        return CiliumPolicyParser.Build(ctx, map, cidr, except.Select(e => e!.Value).ToList(), MatchesPods: true);
    }

    private PortMatch? Port(YamlNode node, string path) => PortParsing.Read(ctx, node, path, defaultProtocol: "TCP", allowAny: false);
}
