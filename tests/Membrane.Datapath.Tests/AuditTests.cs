using System.Net;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>
/// Policy audit mode, per endpoint (flag in its address entry) and agent-wide (config flag): what policy would drop is
/// let through, tracked, counted by direction and match kind and reported as audited; what is not a policy decision
/// (forged sources, VLAN tags, malformed headers) is dropped exactly as without audit.
/// </summary>
public sealed class AuditTests : IDisposable
{
    private const string Policies = """
        endpointSelector: {matchLabels: {app: server}}
        ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
        ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "81", protocol: TCP}]}]}]
        egress: [{toEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "53", protocol: UDP}]}]}]
        """;

    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    private void Audit(bool enabled) =>
        _h.Datapath.Endpoints.Set(DatapathHarness.TestIfIndex, _h.Engine.FindEndpoint("a/server")!.Addresses, enabled);

    [Fact]
    public void EndpointAuditLetsPolicyDropsThroughCountsAndReportsThem()
    {
        _h.Use(Cnp("p", "a", Policies), "a/server");
        _h.Datapath.SetEvents(drops: true, verdicts: false);
        Audit(true);
        var (client, server) = (_h.V4("a/client"), _h.V4("a/server"));

        Assert.True(_h.Receives(Frame(client, server, Icmp, IcmpMessage(8, 0))), "default deny, audited");
        Assert.True(_h.Receives(Frame(client, server, Tcp, TcpSegment(40000, 81))), "deny rule, audited");
        Assert.True(_h.Sends(Frame(server, client, Udp, UdpDatagram(5000, 54))), "egress default deny, audited");
        // Tracked like an allowed connection: the echo's reply and the connection's next packet are not audited again.
        Assert.True(_h.Sends(Frame(server, client, Icmp, IcmpMessage(0, 0))));
        Assert.True(_h.Receives(Frame(client, server, Tcp, TcpSegment(40000, 81, TcpAck))));

        Assert.All(_h.Datapath.DropCounters(), d => Assert.Equal(0ul, d.Value.Packets));
        var audits = _h.Datapath.AuditCounters();
        Assert.Equal(1ul, audits[(WireDirection.Ingress, WireMatchKind.None)].Packets);
        Assert.Equal(1ul, audits[(WireDirection.Egress, WireMatchKind.None)].Packets);
        Assert.Equal(1L, audits.Where(a => a.Key.Direction == WireDirection.Ingress && a.Key.Kind != WireMatchKind.None)
            .Sum(a => (long)a.Value.Packets));
        // The deny entry did not drop anything, so it counts nothing.
        Assert.DoesNotContain(_h.Datapath.PolicyMap.Entries(), e => e.Value.Deny == 1 && e.Value.Packets > 0);

        var events = _h.Events();
        Assert.Equal(3, events.Count);
        Assert.All(events, e => Assert.Equal((byte)EventType.Audit, e.Type));
        Assert.Equal([(byte)DropReason.Policy, (byte)DropReason.PolicyDeny, (byte)DropReason.Policy], events.Select(e => e.Reason));
        Assert.Contains("spec.ingressDeny[0]", _h.Datapath.Rules.Describe(events[1].RuleId), StringComparison.Ordinal);
    }

    [Fact]
    public void AuditOffDropsAgainAndAgentWideAuditCoversEveryEndpoint()
    {
        _h.Use(Cnp("p", "a", Policies), "a/server");
        var (client, server) = (_h.V4("a/client"), _h.V4("a/server"));
        Assert.False(_h.Receives(Frame(client, server, Tcp, TcpSegment(40000, 81))));

        _h.Datapath.SetAuditMode(true); // the endpoint's own flag is off
        Assert.True(_h.Receives(Frame(client, server, Tcp, TcpSegment(40001, 81))));
        Assert.True(_h.Receives(Frame(_h.V6("a/client"), _h.V6("a/server"), IcmpV6, IcmpMessage(128, 0))));
        // Events follow the monitor, audit mode does not change them.
        _h.Datapath.SetEvents(drops: true, verdicts: true);
        Assert.True(_h.Datapath.AuditMode);

        _h.Datapath.SetAuditMode(false);
        Assert.False(_h.Receives(Frame(client, server, Tcp, TcpSegment(40002, 81))));
        Assert.False(_h.Receives(Frame(client, server, Icmp, IcmpMessage(8, 0))));
        Assert.Equal(1ul, _h.Datapath.DropCounters()[DropReason.Policy].Packets);
        Assert.Equal(2ul, _h.Datapath.DropCounters()[DropReason.PolicyDeny].Packets);
    }

    [Fact]
    public void AuditNeverLetsAHostilePodsForgedPacketsThrough()
    {
        _h.Use(Cnp("p", "a", Policies), "a/server");
        Audit(true);
        _h.Datapath.SetAuditMode(true);
        var (client, server) = (_h.V4("a/client"), _h.V4("a/server"));

        Assert.False(_h.Sends(Frame(client, server, Udp, UdpDatagram(53, 53))), "another pod's source address");
        Assert.False(_h.Sends(Frame(IPAddress.Parse("203.0.113.9"), client, Udp, UdpDatagram(1, 53))), "an outside address");
        Assert.False(_h.Sends(Arp(client, IPAddress.Parse("169.254.1.1"))), "ARP for another pod's address");
        Assert.False(_h.Sends(Tagged(Frame(server, client, Udp, UdpDatagram(5000, 53)), tags: 2)), "stacked VLAN tags");
        Assert.False(_h.Sends(Frame(server, client, Tcp, [0x00, 0x50])), "truncated TCP header");

        var drops = _h.Datapath.DropCounters();
        Assert.Equal(3ul, drops[DropReason.InvalidSource].Packets);
        Assert.Equal(1ul, drops[DropReason.UnknownL3].Packets);
        Assert.Equal(1ul, drops[DropReason.Malformed].Packets);
        Assert.All(_h.Datapath.AuditCounters(), a => Assert.Equal(0ul, a.Value.Packets));
    }
}
