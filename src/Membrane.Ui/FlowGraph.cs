using System.Globalization;
using Membrane.Api;
using Membrane.Policy.Rules;

namespace Membrane.Ui;

/// <summary>
/// A box of the map: a pod (grouped by its namespace, with its node in cluster mode) or a peer that is no pod — world,
/// the host, remote nodes, a CIDR identity — named after its identity's labels.
/// </summary>
public sealed record MapNode(string Id, string Label, string Kind, string? Namespace, string? Node, uint Identity);

/// <summary>
/// One arrow of the map: flows of the ring from one box to another with the same verdict, protocol and port (or ICMP type),
/// counted, with the newest flow's time and drop reason.
/// </summary>
public sealed record MapEdge(string Id, string Source, string Target, string Verdict, string Protocol, int? Port, int? IcmpType,
    string What, int Count, DateTimeOffset Last, string? Reason, string Direction, string Family);

public sealed record FlowMap(IReadOnlyList<MapNode> Nodes, IReadOnlyList<MapEdge> Edges, int Flows, int Capacity, ulong EventsLost,
    DateTimeOffset Generated);

/// <summary>Turns the agent's endpoints and flow ring into the map the page draws; every filter is observe's.</summary>
public static class FlowGraph
{
    public static FlowMap Build(IReadOnlyList<EndpointOutput> endpoints, FlowsResponse ring, FlowFilter filter, DateTimeOffset now)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        ArgumentNullException.ThrowIfNull(ring);
        ArgumentNullException.ThrowIfNull(filter);
        var nodes = new Dictionary<string, MapNode>(StringComparer.Ordinal);
        foreach (var e in endpoints)
        {
            var slash = e.Pod.IndexOf('/', StringComparison.Ordinal);
            nodes[e.Pod] = new MapNode(e.Pod, slash < 0 ? e.Pod : e.Pod[(slash + 1)..], "pod", slash < 0 ? null : e.Pod[..slash], e.Node,
                e.Identity);
        }
        var edges = new Dictionary<string, MapEdge>(StringComparer.Ordinal);
        var matched = 0;
        foreach (var flow in ring.Flows)
        {
            if (!filter.Matches(flow, now))
            {
                continue;
            }
            matched++;
            var source = NodeOf(flow.Source, nodes);
            var target = NodeOf(flow.Destination, nodes);
            var protocol = FlowFilter.ProtocolOf(flow);
            var icmp = flow.L4.IcmpV4 ?? flow.L4.IcmpV6;
            int? port = FlowFilter.PortsOf(flow)?.DestinationPort;
            var what = icmp is not null ? $"{protocol} {IcmpName(protocol, icmp.Type)}" : port is { } p ? $"{protocol}/{p}" : protocol;
            var verdict = flow.Verdict.ToUpperInvariant();
            var id = string.Join('|', source, target, verdict, what);
            edges[id] = edges.TryGetValue(id, out var seen)
                ? seen with
                {
                    Count = seen.Count + 1,
                    Last = flow.Time > seen.Last ? flow.Time : seen.Last,
                    Reason = flow.DropReasonDesc ?? seen.Reason,
                }
                : new MapEdge(id, source, target, verdict, protocol, icmp is null ? port : null, icmp?.Type, what, 1, flow.Time,
                    flow.DropReasonDesc, flow.TrafficDirection.ToLowerInvariant(), flow.Ip.IpVersion);
        }
        return new FlowMap([.. nodes.Values.OrderBy(n => n.Id, StringComparer.Ordinal)],
            [.. edges.Values.OrderBy(e => e.Id, StringComparer.Ordinal)], matched, ring.Capacity, ring.EventsLost, now);
    }

    /// <summary>The ICMP type's name (EchoRequest), or its number when it has none.</summary>
    public static string IcmpName(string protocol, int type) =>
        IcmpTypes.NameOf(protocol == "icmpv6" ? IcmpFamily.IPv6 : IcmpFamily.IPv4, (byte)type)
            ?? type.ToString(CultureInfo.InvariantCulture);

    private static string NodeOf(FlowEndpoint side, Dictionary<string, MapNode> nodes)
    {
        if (FlowFilter.PodOf(side) is { } pod)
        {
            if (!nodes.ContainsKey(pod))
            {
                nodes[pod] = new MapNode(pod, side.PodName!, "pod", side.Namespace, null, side.Identity); // a pod the node no longer has
            }
            return pod;
        }
        var (kind, label) = Reserved(side);
        var id = $"identity:{side.Identity}";
        nodes.TryAdd(id, new MapNode(id, label, kind, null, null, side.Identity));
        return id;
    }

    /// <summary>What a peer that is no pod is: reserved:world → world; cidr:10.0.0.0/8 → the prefix.</summary>
    private static (string Kind, string Label) Reserved(FlowEndpoint side)
    {
        foreach (var label in side.Labels)
        {
            if (label.StartsWith("reserved:", StringComparison.Ordinal))
            {
                var name = label["reserved:".Length..];
                return (name, name);
            }
        }
        var cidr = side.Labels.FirstOrDefault(l => l.StartsWith("cidr:", StringComparison.Ordinal));
        return cidr is not null ? ("cidr", cidr["cidr:".Length..]) : ("identity", $"identity {side.Identity}");
    }
}
