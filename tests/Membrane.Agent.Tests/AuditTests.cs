using System.Net;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// Policy audit mode on real traffic: per endpoint (<c>membrane endpoint config</c>, kept across a restart) and
/// agent-wide (<c>--policy-audit-mode</c>). What policy would drop gets through and is an AUDIT flow; leaving audit mode
/// cuts the connections audit let in; bad settings are refused and change nothing.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class AuditTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server";

    public AuditTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
        // Only UDP 53 from the client: ping and TCP 80 are dropped by policy.
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-dns", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "53", protocol: UDP}]}]}]
            """), "import").Code);
    }

    private EndpointConfigOutput Config(params string[] settings) => JsonSerializer.Deserialize(
        _s.CliOk(["endpoint", "config", Server, .. settings, "-o", "json"]).Out, AgentJsonContext.Default.EndpointConfigOutput)!;

    private List<Flow> AuditFlows() => _s.CliOk("observe", "--verdict", "AUDIT", "--to-pod", Server, "-o", "json").Out
        .Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonSerializer.Deserialize(l, AgentJsonContext.Default.Flow)!)
        .ToList();

    [Fact]
    public void EndpointAuditModeLetsDropsThroughReportsThemAndSurvivesARestart()
    {
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        var target = IPAddress.Parse(server.IPv4!);
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x5a01), "ping must be dropped before audit mode");
        try
        {
            Assert.Equal("Enabled", Config("PolicyAuditMode=Enabled").Settings["PolicyAuditMode"]);
            Assert.Contains("audit", _s.CliOk("endpoint", "list").Out, StringComparison.Ordinal);
            Assert.True(_s.Endpoint(Server).PolicyAudit);
            Assert.False(_s.Endpoint(Client).PolicyAudit);

            Assert.True(PodTraffic.Echo(client.Netns, target, 0x5a02), "audit mode must let the ping through");
            using (var connection = PodTraffic.Connect(client.Netns, target, 80))
            {
                Assert.True(PodTraffic.RoundTrip(connection, "audited"u8));
            }
            var flows = AuditFlows();
            Assert.Contains(flows, f => f.L4.IcmpV4 is { Type: 8 } && f.Source.PodName == "client" && f.DropReasonDesc == "Policy denied");
            Assert.Contains(flows, f => f.L4.Tcp is { DestinationPort: 80 } && f.TrafficDirection == "INGRESS");
            Assert.Contains("AUDIT", _s.CliOk("observe", "--verdict", "AUDIT", "--last", "1").Out, StringComparison.Ordinal);
            // Trace says what policy decides and that the datapath lets it through.
            var trace = _s.Cli("policy", "trace", "--from", Client, "--to", Server, "--protocol", "icmp", "--icmp-type", "EchoRequest");
            Assert.Equal(1, trace.Code);
            Assert.Contains($"audit mode on {Server} (ingress)", trace.Out, StringComparison.Ordinal);

            // Bad settings are refused, naming what is wrong, and change nothing.
            var bad = _s.Cli("endpoint", "config", Server, "PolicyAuditMode=Maybe");
            Assert.NotEqual(0, bad.Code);
            Assert.Contains("\"Maybe\" is not one of Enabled, Disabled", bad.Err, StringComparison.Ordinal);
            Assert.Contains("unknown endpoint setting \"Conntrack\"",
                _s.Cli("endpoint", "config", Server, "PolicyAuditMode=Disabled", "Conntrack=Enabled").Err, StringComparison.Ordinal);
            Assert.Contains("not SETTING=VALUE", _s.Cli("endpoint", "config", Server, "PolicyAuditMode").Err, StringComparison.Ordinal);
            Assert.Contains("no endpoint \"e2e-a/nobody\"", _s.Cli("endpoint", "config", "e2e-a/nobody", "PolicyAuditMode=Enabled").Err,
                StringComparison.Ordinal);
            Assert.Equal("Enabled", Config().Settings["PolicyAuditMode"]);

            // Kept across a restart (kill -9: no orderly shutdown).
            _s.KillAgent();
            _s.StartAgent();
            Assert.Equal("Enabled", Config().Settings["PolicyAuditMode"]);
            Assert.True(PodTraffic.Echo(client.Netns, target, 0x5a03), "audit mode must survive a restart");

            // Leaving audit mode cuts what audit let in: the connection open now stops, new pings are dropped.
            using var held = PodTraffic.Connect(client.Netns, target, 80);
            Assert.True(PodTraffic.RoundTrip(held, "before"u8));
            Assert.Equal("Disabled", Config("policyauditmode=disabled").Settings["PolicyAuditMode"]);
            Assert.False(PodTraffic.RoundTrip(held, "after"u8), "a connection audit let in must be cut when audit mode ends");
            Assert.False(PodTraffic.Echo(client.Netns, target, 0x5a04));
        }
        finally
        {
            _s.Cli("endpoint", "config", Server, "PolicyAuditMode=Disabled");
        }
    }

    [Fact]
    public void AgentWideAuditModeCoversEveryEndpoint()
    {
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        var target = IPAddress.Parse(server.IPv4!);
        _s.KillAgent();
        try
        {
            _s.StartAgent("--policy-audit-mode");
            var status = JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out, AgentJsonContext.Default.StatusResponse)!;
            Assert.True(status.PolicyAuditMode);
            Assert.True(_s.Endpoint(Server).PolicyAudit);
            Assert.True(Config().AgentPolicyAuditMode);
            Assert.True(PodTraffic.Echo(client.Netns, target, 0x5b01));
            Assert.Contains(AuditFlows(), f => f.L4.IcmpV4 is { Type: 8 });
        }
        finally
        {
            _s.KillAgent();
            _s.StartAgent();
        }
        // Without the option the pinned config no longer audits.
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x5b02));
    }
}
