using Membrane.Agent.Changes;
using Membrane.Agent.Monitoring;
using Membrane.Api;
using Membrane.Datapath;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;

namespace Membrane.Agent.Objects;

/// <summary>
/// <c>policy import --dry-run</c> and <c>policy delete --dry-run</c>: the change is made on a fork of the engine, the
/// new map state of every local endpoint compared with the one in force, and every live connection (conntrack)
/// judged by both, exactly as the regenerator judges connections after a real change; so is every policy decision the
/// flow ring recorded (drops, audits, new connections). Nothing is installed.
/// </summary>
public sealed class PolicyDryRun(ChangeCoordinator coordinator, PolicyDatapath datapath, EventHub events)
{
    private PolicyEngine Engine => coordinator.State.Engine;

    public Task<DryRunResponse> RunAsync(DryRunRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var set = request.Yaml is not null ? ObjectChanges.Parse(new ManifestRequest(request.Yaml, request.File)) : null;
        if (set is not null && (set.Pods.Count > 0 || set.Namespaces.Count > 0))
        {
            throw new AgentInputException("a dry run takes policies only (as policy import does)");
        }
        if ((set is null) == (request.Delete is null && !request.All))
        {
            throw new AgentInputException("a dry run takes either policies (\"yaml\") or a policy to delete (\"delete\" or \"all\")");
        }
        return coordinator.ExclusiveAsync(() => DryRun(set, request), cancel);
    }

    private DryRunResponse DryRun(Policy.Workloads.ManifestSet? set, DryRunRequest request)
    {
        var fork = Engine.Fork();
        if (set is not null)
        {
            foreach (var policy in set.Policies)
            {
                fork.UpsertPolicy(policy);
            }
        }
        else
        {
            var origins = Engine.Policies.Select(p => p.Origin).ToList();
            var targets = request.All ? origins : ObjectChanges.Named(origins, request.Delete!);
            foreach (var origin in targets)
            {
                fork.RemovePolicy(origin.ToString());
            }
        }
        var before = new Dictionary<uint, (string Pod, MapState State)>();
        var after = new Dictionary<uint, MapState>();
        var endpoints = new List<DryRunEndpoint>();
        foreach (var (key, record) in coordinator.Enforcer.Records)
        {
            var current = Engine.Resolve(key).State;
            var next = fork.Resolve(key).State;
            before[(uint)record.IfIndex] = (key, current);
            after[(uint)record.IfIndex] = next;
            if (!SameEntries(current, next))
            {
                endpoints.Add(new DryRunEndpoint(key, current.Count, next.Count));
            }
        }
        var cut = new List<DryRunConnection>();
        var admitted = new List<DryRunConnection>();
        var checkedCount = 0;
        foreach (var (tuple, value) in datapath.Conntrack.Entries())
        {
            if (!before.TryGetValue(tuple.IfIndex, out var old))
            {
                continue;
            }
            checkedCount++;
            var (source, destination, port) = value.OpenedLo == 1 ? (tuple.Lo, tuple.Hi, tuple.HiPort) : (tuple.Hi, tuple.Lo, tuple.LoPort);
            var direction = PolicyMapSynchronizer.FromWire((WireDirection)value.Direction);
            var icmp = IpProtocol.IsIcmp(tuple.Protocol);
            var keyPort = icmp ? (ushort)(port << 8) : port;
            var then = old.State.Lookup(direction, Engine.IdentityOf(direction == TrafficDirection.Egress ? destination : source),
                tuple.Protocol, keyPort);
            var now = after[tuple.IfIndex].Lookup(direction, fork.IdentityOf(direction == TrafficDirection.Egress ? destination : source),
                tuple.Protocol, keyPort);
            if (then.Allowed == now.Allowed)
            {
                continue;
            }
            (now.Allowed ? admitted : cut).Add(Change(old.Pod, direction, tuple.Protocol, source, destination,
                (icmp ? null : port, icmp ? port : null, null), now));
        }
        var (flowsCut, flowsAdmitted, flowsChecked) = JudgeFlows(before, after);
        return new DryRunResponse(cut, admitted, endpoints, checkedCount, flowsCut, flowsAdmitted, flowsChecked);
    }

    /// <summary>
    /// The flow ring's policy decisions on this node's endpoints, judged by the policy in force and the changed one; alike
    /// flows (pod, direction, addresses, port or ICMP type and code) are reported once, with how many were seen.
    /// </summary>
    private (List<DryRunConnection> Cut, List<DryRunConnection> Admitted, int Checked) JudgeFlows(
        Dictionary<uint, (string Pod, MapState State)> before, Dictionary<uint, MapState> after)
    {
        var decisions = (events.Flows?.Snapshot() ?? []).Where(f => before.ContainsKey(f.Event.IfIndex) && (EventType)f.Event.Type switch
        {
            EventType.Drop => f.Event.Reason is (byte)DropReason.Policy or (byte)DropReason.PolicyDeny,
            _ => true, // a new allowed connection, or an audited one
        }).ToList();
        var cut = new List<DryRunConnection>();
        var admitted = new List<DryRunConnection>();
        foreach (var alike in decisions.GroupBy(f => (f.Event.IfIndex, f.Event.Direction, f.Event.Protocol, f.Event.PeerIdentity,
            f.Event.SourceAddress, f.Event.DestinationAddress, Port: FlowPort(f.Event))))
        {
            var (ifIndex, wireDirection, protocol, peer, source, destination, port) = alike.Key;
            var (pod, current) = before[ifIndex];
            var direction = PolicyMapSynchronizer.FromWire((WireDirection)wireDirection);
            var then = current.Lookup(direction, peer, protocol, port);
            var now = after[ifIndex].Lookup(direction, peer, protocol, port);
            if (then.Allowed == now.Allowed)
            {
                continue;
            }
            var icmp = IpProtocol.IsIcmp(protocol);
            (now.Allowed ? admitted : cut).Add(Change(pod, direction, protocol, source, destination,
                (icmp ? null : port, icmp ? port >> 8 : null, icmp ? port & 0xff : null), now) with
            {
                Seen = alike.Count(),
                LastSeen = alike.Max(f => f.Time),
            });
        }
        return (cut, admitted, decisions.Count);
    }

    /// <summary>
    /// A connection or flow whose verdict the change flips to <paramref name="now"/>, with the rules of the deciding entry
    /// (or why nothing matches) as the cause.
    /// </summary>
    private static DryRunConnection Change(string pod, TrafficDirection direction, byte protocol, System.Net.IPAddress source,
        System.Net.IPAddress destination, (int? Port, int? IcmpType, int? IcmpCode) l4, LookupResult now) =>
        new(pod, direction == TrafficDirection.Ingress ? "ingress" : "egress", IpProtocol.Name(protocol).ToLowerInvariant(),
            source.ToString(), destination.ToString(), l4.Port, l4.IcmpType, now.Allowed ? "denied" : "allowed",
            now.Allowed ? "allowed" : "denied", now.Entry is { DerivedFrom.Count: > 0 } entry ? string.Join("; ", entry.DerivedFrom)
                : now.Reason, l4.IcmpCode);

    /// <summary>The policy key's port of a flow: the destination port, or ICMP type and code.</summary>
    private static ushort FlowPort(DatapathEvent e) =>
        IpProtocol.IsIcmp(e.Protocol) ? (ushort)(e.IcmpType << 8 | e.IcmpCode) : e.DestinationPort;

    private static bool SameEntries(MapState a, MapState b) =>
        a.Count == b.Count && a.Entries.All(e => b.Entries.TryGetValue(e.Key, out var other) && other.Verdict == e.Value.Verdict);
}
