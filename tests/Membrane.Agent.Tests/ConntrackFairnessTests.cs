using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// Conntrack admission is fair: each endpoint has its own table, so a pod that floods new flows evicts only its own
/// connections. The victim is another pod's idle UDP connection to the node, whose later pushes reach the pod only
/// through that connection's entry (the pod's ingress is deny-all).
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class ConntrackFairnessTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server", Other = "e2e-b/other";
    private const int Flows = 3 * SandboxFixture.ConntrackEntriesPerEndpoint;
    private static readonly string NodeNetns = $"{SandboxFixture.Prefix}-node";

    public ConntrackFairnessTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private ConntrackUsageOutput Usage(string endpoint) => JsonSerializer.Deserialize(
        _s.CliOk("bpf", "ct", "usage", "--endpoint", endpoint, "-o", "json").Out,
        AgentJsonContext.Default.ListConntrackUsageOutput)!.Single();

    [Fact]
    public void AFloodingPodEvictsOnlyItsOwnConnections()
    {
        Assert.True(_s.Apply(SandboxFixture.Cnp("victim", """
            endpointSelector: {matchLabels: {app: other}}
            egress: [{toEntities: [host]}]
            ingress: [{}]
            """), "import").Code == 0);
        Assert.True(_s.Apply(SandboxFixture.Cnp("flooder", """
            endpointSelector: {matchLabels: {app: client}}
            egress: [{toEndpoints: [{matchLabels: {app: server}}]}]
            """), "import").Code == 0);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server), other = _s.Endpoint(Other);
        _s.CliOk("bpf", "ct", "flush"); // earlier tests' connections would count in the tables
        var nodeAddress = HostilePodTests.Addresses(NodeNetns, "lo")
            .First(a => a.AddressFamily == AddressFamily.InterNetwork && !IPAddress.IsLoopback(a));

        using var node = NetworkNamespace.Run(NodeNetns, () => new Socket(AddressFamily.InterNetwork, SocketType.Dgram, ProtocolType.Udp));
        node.Bind(new IPEndPoint(nodeAddress, 0));
        using var victim = NetworkNamespace.Run(other.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Dgram,
            ProtocolType.Udp));
        victim.Bind(new IPEndPoint(IPAddress.Parse(other.IPv4!), 0));
        victim.SendTo("open"u8.ToArray(), node.LocalEndPoint!);
        var buffer = new byte[64];
        node.ReceiveTimeout = victim.ReceiveTimeout = 2000;
        EndPoint from = new IPEndPoint(IPAddress.Any, 0);
        Assert.Equal(4, node.ReceiveFrom(buffer, ref from));

        bool PushArrives()
        {
            var marker = RawFrames.NewMarker();
            node.SendTo(marker, from);
            try
            {
                var n = victim.Receive(buffer);
                return buffer.AsSpan(0, n).SequenceEqual(marker);
            }
            catch (SocketException)
            {
                return false;
            }
        }
        Assert.True(PushArrives(), "the node's push reaches the pod through its connection (else this test sees nothing)");

        // The flood: one datagram to each of Flows ports of the server, every one a new allowed flow, three times the
        // client's table.
        using var flooder = NetworkNamespace.Run(client.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Dgram,
            ProtocolType.Udp));
        var watch = Stopwatch.StartNew();
        for (var port = 0; port < Flows; port++)
        {
            flooder.SendTo([1], new IPEndPoint(IPAddress.Parse(server.IPv4!), 20000 + port));
        }
        watch.Stop();
        Assert.True(watch.Elapsed < TimeSpan.FromSeconds(30), $"the flood of {Flows} flows took {watch.Elapsed}");

        var flooded = Usage(Client);
        Assert.Equal(SandboxFixture.ConntrackEntriesPerEndpoint, flooded.Capacity);
        // The kernel's charge for the three preallocated tables: at least their keys and values, and the same for an
        // endpoint whose tables are nearly empty.
        Assert.InRange(flooded.MemoryBytes, SandboxFixture.ConntrackEntriesPerEndpoint * (20L + 40 + 44 + 40) + 1024L * (44 + 16),
            8L << 20);
        Assert.Equal(flooded.MemoryBytes, Usage(Other).MemoryBytes);
        Assert.True(flooded.IPv4 >= SandboxFixture.ConntrackEntriesPerEndpoint * 3 / 4,
            $"the flooder's table holds {flooded.IPv4} of {flooded.Capacity}: the flood did not fill it");
        Assert.InRange(Usage(Other).IPv4, 1, 16);
        Assert.True(PushArrives(), "after the flood, the idle connection of another pod lost its entry");
    }
}
