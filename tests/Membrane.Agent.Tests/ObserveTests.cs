using System.Text.Json;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// <c>membrane observe</c> after the fact, with no monitor listening when the traffic ran: a ping an L4 policy drops
/// and a TCP connection it admits are in the agent's flow ring, found by the flow tool's filters, printed in its
/// JSON field names.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class ObserveTests
{
    private readonly SandboxFixture _s;

    public ObserveTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private List<Flow> Observe(params string[] filters) => _s.CliOk(["observe", .. filters, "-o", "json"]).Out
        .Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonSerializer.Deserialize(l, AgentJsonContext.Default.Flow)!)
        .ToList();

    [Fact]
    public void DropsAndNewConnectionsAreKeptAndFiltered()
    {
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-l4", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """), "import").Code);
        Assert.Equal(1, _s.Cli("connectivity", "probe", "--from", "e2e-a/client", "--to", "e2e-a/server", "--protocol", "icmp",
            "--icmp-type", "EchoRequest").Code);
        Assert.Equal(0, _s.Cli("connectivity", "probe", "--from", "e2e-a/client", "--to", "e2e-a/server", "--protocol", "tcp", "--port",
            "80").Code);
        var server = _s.Endpoint("e2e-a/server");
        var client = _s.Endpoint("e2e-a/client");

        var dropped = Observe("--verdict", "DROPPED", "--to-pod", "e2e-a/server", "--protocol", "icmp", "--icmp-type", "8", "--since",
            "5m");
        var ping = Assert.Single(dropped.TakeLast(1));
        Assert.Equal("INGRESS", ping.TrafficDirection);
        Assert.Equal("Policy denied", ping.DropReasonDesc);
        Assert.Equal(("e2e-a", "client", client.Identity), (ping.Source.Namespace, ping.Source.PodName, ping.Source.Identity));
        Assert.Equal(("e2e-a", "server"), (ping.Destination.Namespace, ping.Destination.PodName));
        Assert.Contains("k8s:app=server", ping.Destination.Labels);
        Assert.Equal(8, ping.L4.IcmpV4!.Type);
        Assert.Equal((client.IPv4, server.IPv4, "IPv4"), (ping.Ip.Source, ping.Ip.Destination, ping.Ip.IpVersion));

        var admitted = Observe("--verdict", "FORWARDED", "--port", "80", "--from-pod", "e2e-a/client");
        Assert.Contains(admitted, f => f.L4.Tcp is { DestinationPort: 80 } && f.Destination.PodName == "server"
            && f.PolicyMatchType is not null);
        Assert.DoesNotContain(admitted, f => f.Verdict != "FORWARDED" || f.Source.PodName != "client");
        Assert.Single(Observe("--last", "1"));
        Assert.Empty(Observe("--namespace", "no-such-namespace"));
        Assert.Empty(Observe("--verdict", "DROPPED", "--port", "80", "--from-pod", "e2e-a/client"));

        var text = _s.CliOk("observe", "--verdict", "DROPPED", "--last", "1").Out;
        Assert.Contains("events lost", text, StringComparison.Ordinal);
        Assert.Contains("e2e-a/client", text, StringComparison.Ordinal);
        Assert.NotEqual(0, _s.Cli("observe", "--since", "yesterday").Code);
    }

    [Fact]
    public void WithoutAggregationEveryPacketIsAFlow()
    {
        EndpointOutput client = _s.Endpoint("e2e-a/client"), server = _s.Endpoint("e2e-a/server");
        _s.KillAgent();
        try
        {
            _s.StartAgent("--monitor-aggregation", "none");
            using (var connection = PodTraffic.Connect(client.Netns, System.Net.IPAddress.Parse(server.IPv4!), 80))
            {
                Assert.True(PodTraffic.RoundTrip(connection, "every packet"u8));
            }
            var flows = Observe("--from-pod", "e2e-a/client", "--port", "80");
            Assert.Contains(flows, f => f.TraceReason == "NEW" && f.IsReply == false);
            Assert.Contains(flows, f => f.TraceReason == "ESTABLISHED" && f.Verdict == "FORWARDED");
            var replies = Observe("--from-pod", "e2e-a/server");
            Assert.Contains(replies, f => f.TraceReason == "REPLY" && f.IsReply == true && f.L4.Tcp is { SourcePort: 80 });
        }
        finally
        {
            _s.KillAgent();
            _s.StartAgent();
        }
        // Aggregated again: a new connection adds its NEW flow only, per direction that enforces nothing.
        using (var connection = PodTraffic.Connect(client.Netns, System.Net.IPAddress.Parse(server.IPv4!), 80))
        {
            Assert.True(PodTraffic.RoundTrip(connection, "aggregated"u8));
        }
        Assert.DoesNotContain(Observe("--since", "5s"), f => f.TraceReason is "ESTABLISHED" or "REPLY");
    }
}
