using System.Net.Sockets;
using Membrane.Policy.Labels;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Tests.Tracing;

/// <summary>
/// For random policies and flows the trace verdict must equal (1) a brute-force scan of the map state (every
/// matching entry, deny wins) and (2) an independent evaluation of the rules themselves. The first checks the
/// longest-prefix lookup and the deny-precedence rewrite; the second checks resolution against the semantics.
/// </summary>
public sealed class TracePropertyTests
{
    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void TraceEqualsMapScanAndRuleOracle(int seedBlock)
    {
        var checkedFlows = 0;
        for (var seed = seedBlock * 1000; seed < seedBlock * 1000 + 150; seed++)
        {
            var generator = new RandomPolicies(seed);
            var yaml = generator.Generate();
            var cluster = Cluster.With(yaml);
            foreach (var from in RandomPolicies.Pods)
            {
                foreach (var to in RandomPolicies.Pods)
                {
                    var flow = RandomPolicies.Flows[generator.Next(RandomPolicies.Flows.Length)];
                    var trace = cluster.Trace(from, to, flow.Protocol, flow.Port, flow.Type, flow.Code);
                    var request = trace.Request;
                    var scan = Scan(cluster.Engine.Resolve(from).State, TrafficDirection.Egress, trace.DestinationIdentity, request)
                        && Scan(cluster.Engine.Resolve(to).State, TrafficDirection.Ingress, trace.SourceIdentity, request);
                    var oracle = RuleOracle.Allowed(cluster.Engine, from, to, request);
                    Assert.True(scan == trace.Allowed,
                        $"seed {seed} {from}->{to} {request.Describe()}: trace {trace.Verdict}, map scan {scan}\n{yaml}");
                    Assert.True(oracle == trace.Allowed,
                        $"seed {seed} {from}->{to} {request.Describe()}: trace {trace.Verdict}, rule oracle {oracle}\n{yaml}");
                    checkedFlows++;
                }
            }
        }
        Assert.Equal(150 * 16, checkedFlows);
    }

    private static bool Scan(MapState state, TrafficDirection direction, uint peer, TraceRequest request)
    {
        var matching = state.Entries.Where(e => e.Key.Direction == direction
            && (e.Key.Matches(peer, request.Protocol, request.KeyPort) || e.Key.Matches(0, request.Protocol, request.KeyPort))).ToList();
        return matching.Count > 0 && matching.All(e => !e.Value.IsDeny);
    }
}

/// <summary>The semantics evaluated straight from the rules, without map state.</summary>
internal static class RuleOracle
{
    public static bool Allowed(PolicyEngine engine, string from, string to, TraceRequest request)
    {
        var source = engine.FindEndpoint(from)!;
        var destination = engine.FindEndpoint(to)!;
        return Side(engine, source, destination, TrafficDirection.Egress, destination, request)
            && Side(engine, destination, source, TrafficDirection.Ingress, destination, request);
    }

    private static bool Side(PolicyEngine engine, Endpoint subject, Endpoint peer, TrafficDirection direction, Endpoint destination,
        TraceRequest request)
    {
        var specs = engine.Policies.SelectMany(p => p.Specs).Where(s => s.Subject.Matches(subject.Labels)).ToList();
        var rules = specs.SelectMany(s => s.Rules).Where(r => r.Direction == direction && !r.AllowsNothing).ToList();
        if (rules.Any(r => r.Action == RuleAction.Deny && Matches(r, peer, destination, request)))
        {
            return false;
        }
        if (!specs.Any(s => s.Enforces.Contains(direction)))
        {
            return true;
        }
        var requires = rules.SelectMany(r => r.Requires).ToList();
        return requires.All(s => s.Matches(peer.Labels))
            && rules.Any(r => r.Action == RuleAction.Allow && Matches(r, peer, destination, request));
    }

    private static bool Matches(PolicyRule rule, Endpoint peer, Endpoint destination, TraceRequest request)
    {
        var peerMatches = rule.Peers is null || rule.Peers.Any(p => p switch
        {
            EndpointPeer e => e.Selector.Matches(peer.Labels),
            EntityPeer n => n.Entity is "all" or "cluster",
            _ => false,
        });
        if (!peerMatches)
        {
            return false;
        }
        if (rule.IsL3Only)
        {
            return true;
        }
        if (rule.Icmps?.Any(i => i.Protocol == request.Protocol && i.Type == request.IcmpType && (i.Code is null
            || i.Code == request.IcmpCode)) == true)
        {
            return true;
        }
        return rule.Ports?.Any(p => p.Protocols.Contains(request.Protocol) && PortMatches(p, destination, request)) == true;
    }

    private static bool PortMatches(PortMatch port, Endpoint destination, TraceRequest request)
    {
        if (port.Name is not null)
        {
            return destination.Pod.Ports.Any(c => c.Name == port.Name && c.Port == request.Port
                && new PortMatch(c.Protocol, 0, 0, null).Protocols.Contains(request.Protocol));
        }
        return port.Port == 0 || request.Port >= port.Port && request.Port <= Math.Max(port.Port, port.EndPort);
    }
}
