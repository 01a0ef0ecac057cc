using Membrane.Api;

namespace Membrane.Ui.Tests;

public sealed class FlowGraphTests
{
    private static readonly DateTimeOffset Now =
        DateTimeOffset.Parse("2026-12-07T03:00:00Z", System.Globalization.CultureInfo.InvariantCulture);

    private static FlowEndpoint Pod(string ns, string name, uint identity) => new(identity, ns, name, [$"k8s:app={name}"]);

    private static readonly FlowEndpoint World = new(2, null, null, ["reserved:world"]);

    private static Flow Flow(FlowEndpoint from, FlowEndpoint to, string verdict, FlowL4 l4, int secondsAgo = 1, string? reason = null) =>
        new(Now.AddSeconds(-secondsAgo), verdict, reason, new FlowIp("10.0.0.1", "10.0.0.2", "IPv4"), l4, from, to, "INGRESS", null, null);

    private static readonly EndpointOutput Web = new(3, "demo/web", 257, [], "10.0.0.3", null, "mbh1", "ns1", true, false, 2, [], null);

    private static FlowsResponse Ring(params Flow[] flows) => new(flows, 4096, 0);

    [Fact]
    public void FlowsOfOneKindBecomeOneCountedEdge()
    {
        var client = Pod("demo", "client", 256);
        var web = Pod("demo", "web", 257);
        var map = FlowGraph.Build([Web], Ring(
            Flow(client, web, "DROPPED", new FlowL4(IcmpV4: new FlowIcmp(8, 0)), 5, "Policy denied"),
            Flow(client, web, "DROPPED", new FlowL4(IcmpV4: new FlowIcmp(8, 0)), 2, "Policy denied"),
            Flow(client, web, "FORWARDED", new FlowL4(Tcp: new FlowPorts(40000, 80))),
            Flow(World, web, "DROPPED", new FlowL4(Udp: new FlowPorts(5353, 53)))), new FlowFilter(), Now);

        var dropped = Assert.Single(map.Edges, e => e.What == "icmp EchoRequest");
        Assert.Equal(("demo/client", "demo/web", "DROPPED", 2), (dropped.Source, dropped.Target, dropped.Verdict, dropped.Count));
        Assert.Equal(Now.AddSeconds(-2), dropped.Last);
        Assert.Equal(8, dropped.IcmpType);
        var tcp = Assert.Single(map.Edges, e => e.What == "tcp/80");
        Assert.Equal(("FORWARDED", 80), (tcp.Verdict, tcp.Port));
        var world = Assert.Single(map.Nodes, n => n.Kind == "world");
        Assert.Equal("identity:2", world.Id);
        Assert.Contains(map.Edges, e => e.Source == "identity:2" && e.What == "udp/53");
        // Every pod of the node is on the map, with or without flows; pods only seen in flows too.
        Assert.Equal(["demo/client", "demo/web", "identity:2"], map.Nodes.Select(n => n.Id));
        Assert.Equal(4, map.Flows);
    }

    [Fact]
    public void ObservesFiltersApply()
    {
        var client = Pod("demo", "client", 256);
        var web = Pod("demo", "web", 257);
        var other = Pod("other", "intruder", 258);
        var ring = Ring(
            Flow(client, web, "DROPPED", new FlowL4(IcmpV4: new FlowIcmp(8, 0)), 600),
            Flow(other, web, "DROPPED", new FlowL4(Tcp: new FlowPorts(1, 22))),
            Flow(client, web, "FORWARDED", new FlowL4(Tcp: new FlowPorts(40000, 80))));

        Assert.Equal(["tcp/22", "tcp/80"], FlowGraph.Build([], ring, new FlowFilter(Since: TimeSpan.FromMinutes(1)), Now).Edges
            .Select(e => e.What).Order());
        Assert.Equal(["icmp EchoRequest", "tcp/22"], FlowGraph.Build([], ring, new FlowFilter(Verdict: "dropped"), Now).Edges
            .Select(e => e.What).Order());
        Assert.Equal(["tcp/22"], FlowGraph.Build([], ring, new FlowFilter(Namespace: "other"), Now).Edges.Select(e => e.What));
        Assert.Equal(["tcp/80"], FlowGraph.Build([], ring, new FlowFilter(Port: 80), Now).Edges.Select(e => e.What));
        Assert.Equal(["icmp EchoRequest"], FlowGraph.Build([], ring, new FlowFilter(Protocol: "ICMP", IcmpType: 8), Now).Edges
            .Select(e => e.What));
        Assert.Empty(FlowGraph.Build([], ring, new FlowFilter(FromPod: "demo/web"), Now).Edges);
    }

    [Theory]
    [InlineData("8/ICMP", "ICMP EchoRequest (8)")]
    [InlineData("128/ICMPv6", "ICMPv6 EchoRequest (128)")]
    [InlineData("3:4/ICMP", "ICMP DestinationUnreachable (3) code 4")]
    [InlineData("80/TCP", "80/TCP")]
    [InlineData("ANY", "ANY")]
    [InlineData("ICMP", "ICMP")]
    public void PolicyRowsNameIcmpTypes(string portProtocol, string shown) => Assert.Equal(shown, PodPolicy.Describe(portProtocol));
}
