using System.Net.Sockets;
using Membrane.Policy.Labels;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Tracing;

/// <summary>What is traced: a new flow from one endpoint to another.</summary>
public sealed record TraceRequest(string From, string To, byte Protocol, ushort Port, byte IcmpType, byte? IcmpCode, AddressFamily Family)
{
    public bool IsIcmp => IpProtocol.IsIcmp(Protocol);

    /// <summary>The 16-bit map-key port: the destination port, or ICMP type and code.</summary>
    public ushort KeyPort => IsIcmp ? (ushort)(IcmpType << 8 | (IcmpCode ?? 0)) : Port;

    public string Describe() => IsIcmp
        ? $"{IpProtocol.Name(Protocol)} type " +
            $"{IcmpTypes.Describe(Protocol == IpProtocol.Icmp ? IcmpFamily.IPv4 : IcmpFamily.IPv6, IcmpType)}" +
            $"{(IcmpCode is { } c ? $" code {c}" : "")}"
        : $"{IpProtocol.Name(Protocol)} port {Port}";
}

/// <summary>The verdict of one side (the source's egress or the destination's ingress) and why.</summary>
public sealed record DirectionTrace(
    TrafficDirection Direction,
    string Endpoint,
    uint PeerIdentity,
    bool Enforced,
    IReadOnlyList<string> SelectingPolicies,
    bool Allowed,
    string Reason,
    string? MatchedKey,
    string? MatchKind,
    IReadOnlyList<string> Rules);

public sealed record TraceResult(TraceRequest Request, uint SourceIdentity, uint DestinationIdentity, DirectionTrace Egress,
    DirectionTrace Ingress)
{
    public bool Allowed => Egress.Allowed && Ingress.Allowed;

    public string Verdict => Allowed ? "ALLOWED" : "DENIED";
}

/// <summary>
/// Explains a verdict from the same <see cref="MapState"/> the datapath receives, with the datapath's lookup, so
/// trace and enforcement cannot disagree.
/// </summary>
public static class Tracer
{
    /// <summary>True when a trace endpoint is given as labels (<c>k8s:app=web,io.kubernetes.pod.namespace=demo</c>).</summary>
    public static bool IsLabels(string endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        return endpoint.Contains('=', StringComparison.Ordinal);
    }

    public static TraceResult Trace(PolicyEngine engine, TraceRequest request)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(request);
        if (!IsLabels(request.From) && !IsLabels(request.To))
        {
            return TraceEndpoints(engine, request);
        }
        // Endpoints given as labels become pods of a fork of the engine: same identity rules, namespace-derived labels
        // and selector matching as real ones, and the live engine is not touched.
        var scratch = engine.Fork();
        var from = IsLabels(request.From) ? AddTransient(scratch, request.From, "source") : request.From;
        var to = IsLabels(request.To) ? AddTransient(scratch, request.To, "destination") : request.To;
        var result = TraceEndpoints(scratch, request with { From = from, To = to });
        return result with
        {
            Request = request,
            Egress = result.Egress with { Endpoint = request.From },
            Ingress = result.Ingress with { Endpoint = request.To },
        };
    }

    private static string AddTransient(PolicyEngine engine, string labelText, string role)
    {
        var labels = LabelSet.Parse(labelText);
        var ns = labels.ValueOf(WellKnownLabels.PodNamespace) ?? "default";
        var own = labels.Labels.Where(l => l.Source is LabelSource.Kubernetes or LabelSource.Any or LabelSource.Unspecified
                && !WellKnownLabels.IsNamespaceKey(l.Key) && l.Key != WellKnownLabels.ServiceAccount && l.Key != WellKnownLabels.Cluster)
            .ToDictionary(l => l.Key, l => l.Value, StringComparer.Ordinal);
        var serviceAccount = labels.ValueOf(WellKnownLabels.ServiceAccount) ?? "default";
        var pod = new PodManifest(ns, $"trace-{role}-{Guid.NewGuid():N}"[..30], own, serviceAccount, [], [], "(trace)");
        engine.UpsertPod(pod);
        return pod.Key;
    }

    private static TraceResult TraceEndpoints(PolicyEngine engine, TraceRequest request)
    {
        var source = engine.FindEndpoint(request.From) ?? throw new KeyNotFoundException($"no pod {request.From}");
        var destination = engine.FindEndpoint(request.To) ?? throw new KeyNotFoundException($"no pod {request.To}");
        // The datapath derives peer identities from addresses; do the same so a CIDR rule that shadows a pod shows.
        var destinationId = destination.Address(request.Family) is { } da ? engine.IdentityOf(da) : destination.Identity.Id;
        var sourceId = source.Address(request.Family) is { } sa ? engine.IdentityOf(sa) : source.Identity.Id;
        var egress = Side(engine.Resolve(source.Key), TrafficDirection.Egress, destinationId, request);
        var ingress = Side(engine.Resolve(destination.Key), TrafficDirection.Ingress, sourceId, request);
        return new TraceResult(request, sourceId, destinationId, egress, ingress);
    }

    public static DirectionTrace Side(EndpointPolicy policy, TrafficDirection direction, uint peer, TraceRequest request)
    {
        ArgumentNullException.ThrowIfNull(policy);
        ArgumentNullException.ThrowIfNull(request);
        var selecting = policy.SpecsFor(direction).Select(s => $"{s.Origin}: {s.Path}").Distinct().ToList();
        var result = policy.State.Lookup(direction, peer, request.Protocol, request.KeyPort);
        // Neighbour discovery is exempt only on the pod's own link (hop limit 255, to or from the node); a message of
        // those types between two pods has been routed, so it meets policy like any other.
        var reason = request.Protocol == IpProtocol.IcmpV6 && IcmpTypes.IsNeighbourDiscovery(request.IcmpType)
            ? $"{result.Reason} (neighbour discovery is exempt only on the pod's own link; between pods it is routed and meets policy)"
            : result.Reason;
        return new DirectionTrace(direction, policy.Endpoint.Key, peer, policy.Enforced.Contains(direction), selecting,
            result.Allowed, reason, result.Key?.ToString(), result.Key?.Kind.ToString(), result.Entry?.DerivedFrom ?? []);
    }

    public static string Format(PolicyEngine engine, TraceResult result)
    {
        ArgumentNullException.ThrowIfNull(engine);
        ArgumentNullException.ThrowIfNull(result);
        var w = new StringWriter();
        string Name(uint id) => engine.IdentityAllocator.Get(id)?.Labels.Canonical ?? "?";
        w.WriteLine($"Tracing {result.Request.Describe()} ({(result.Request.Family == AddressFamily.InterNetworkV6 ? "IPv6" : "IPv4")}) " +
            $"from {result.Request.From} to {result.Request.To}");
        w.WriteLine($"  source identity {result.SourceIdentity}: {Name(result.SourceIdentity)}");
        w.WriteLine($"  destination identity {result.DestinationIdentity}: {Name(result.DestinationIdentity)}");
        foreach (var side in new[] { result.Egress, result.Ingress })
        {
            var label = side.Direction == TrafficDirection.Egress ? "Egress from" : "Ingress to";
            w.WriteLine();
            w.WriteLine($"{label} {side.Endpoint}: {(side.Enforced ? "enforced" : "not enforced (no policy selects this direction)")}");
            foreach (var policy in side.SelectingPolicies)
            {
                w.WriteLine($"  selected by {policy}");
            }
            if (side.MatchedKey is not null)
            {
                w.WriteLine($"  matched entry: {side.MatchedKey} [{side.MatchKind}]");
            }
            foreach (var rule in side.Rules)
            {
                w.WriteLine($"    from {rule}");
            }
            w.WriteLine($"  verdict: {(side.Allowed ? "ALLOWED" : "DENIED")} ({side.Reason})");
        }
        w.WriteLine();
        w.WriteLine($"Final verdict: {result.Verdict}");
        return w.ToString();
    }
}
