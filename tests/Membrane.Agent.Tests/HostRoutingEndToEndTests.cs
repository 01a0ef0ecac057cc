using System.Diagnostics;
using System.Net;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// Host routing on real pods, run on both paths (<c>--host-routing bpf</c>, the default, and <c>legacy</c>): the route a
/// packet between two pods of the node takes, the destination's policy judged at the source on real TCP, UDP and ICMP of
/// both families, what must still reach the node's stack (TTL 1, packets too big for the destination's link), an
/// endpoint deleted under a flood and an identity changing mid-flow.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class HostRoutingEndToEndTests
{
    private readonly SandboxFixture _s;
    private const string Client = "e2e-a/client", Server = "e2e-a/server";
    private static readonly string NodeNetns = $"{SandboxFixture.Prefix}-node";

    private const string ServerPolicy = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        - fromEndpoints: [{matchLabels: {app: client}}]
          icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]
        ingressDeny:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: "53", protocol: UDP}]}]
        """;

    public HostRoutingEndToEndTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private void Use(string mode)
    {
        _s.Reset(mode);
        var status = JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out, AgentJsonContext.Default.StatusResponse)!;
        Assert.StartsWith(mode, status.HostRouting, StringComparison.Ordinal);
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-host-routing", ServerPolicy), "import").Code);
    }

    /// <summary>Runs a command inside a pod's namespace: exit code and everything it printed.</summary>
    private static (int Code, string Output) InPod(string netns, params string[] command)
    {
        var start = new ProcessStartInfo("ip") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in (string[])["netns", "exec", netns, .. command])
        {
            start.ArgumentList.Add(a);
        }
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result + stderr);
    }

    private static ulong TransmittedBy(string hostInterface)
    {
        var json = Ip.Run("-n", NodeNetns, "-s", "-j", "link", "show", "dev", hostInterface);
        using var document = JsonDocument.Parse(json);
        return document.RootElement[0].GetProperty("stats64").GetProperty("tx").GetProperty("packets").GetUInt64();
    }

    private int Probe(params string[] flow) =>
        _s.Cli(["connectivity", "probe", "--from", Client, "--to", Server, .. flow, "--timeout", "700"]).Code;

    [Theory]
    [InlineData("bpf")]
    [InlineData("legacy")]
    public void PacketsBetweenPodsOfTheNodeTakeTheRouteTheModeSays(string mode)
    {
        Use(mode);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        InPod(client.Netns, "ping", "-c", "1", "-W", "1", server.IPv4!); // neighbours resolved before counting
        InPod(client.Netns, "ping", "-6", "-c", "1", "-W", "1", server.IPv6!);
        var before = TransmittedBy(server.Interface);
        var v4 = InPod(client.Netns, "ping", "-c", "50", "-i", "0.005", "-W", "1", "-q", server.IPv4!);
        var v6 = InPod(client.Netns, "ping", "-6", "-c", "50", "-i", "0.005", "-W", "1", "-q", server.IPv6!);
        var sent = TransmittedBy(server.Interface) - before;
        Assert.True(v4.Code == 0 && v4.Output.Contains(" 0% packet loss", StringComparison.Ordinal), v4.Output);
        Assert.True(v6.Code == 0 && v6.Output.Contains(" 0% packet loss", StringComparison.Ordinal), v6.Output);
        // With host routing the 100 requests enter the server's namespace straight from the client's hook: its host-side
        // veth transmits none of them (at most a neighbour message of its own). Without it, each one crosses that veth.
        Assert.True(mode == "bpf" ? sent < 10 : sent >= 100, $"{mode}: the server's host-side veth transmitted {sent} packets");

        var trace = JsonSerializer.Deserialize(_s.Cli("policy", "trace", "--from", Client, "--to", Server, "--protocol", "icmp",
            "--icmp-type", "8", "-o", "json").Out, AgentJsonContext.Default.TraceOutput)!;
        Assert.Contains(mode == "bpf" ? "host routing judges e2e-a/server's ingress policy there" : "ingress at to_pod on",
            trace.CheckedAt, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("bpf")]
    [InlineData("legacy")]
    public void TheDestinationsIngressPolicyHoldsOnRealTraffic(string mode)
    {
        Use(mode);
        var deniedBefore = Drops("Policy denied by denylist") + Drops("Policy denied");
        Assert.Equal(0, Probe("--protocol", "tcp", "--port", "80"));
        Assert.Equal(0, Probe("--protocol", "tcp", "--port", "80", "--family", "ipv6"));
        Assert.Equal(1, Probe("--protocol", "tcp", "--port", "22"));
        Assert.Equal(1, Probe("--protocol", "udp", "--port", "53"));
        Assert.Equal(1, Probe("--protocol", "udp", "--port", "53", "--family", "ipv6"));
        Assert.Equal(0, Probe("--protocol", "icmp", "--icmp-type", "EchoRequest"));
        Assert.Equal(0, Probe("--protocol", "icmpv6", "--icmp-type", "EchoRequest"));
        Assert.Equal(1, Probe("--protocol", "icmp", "--icmp-type", "13"));
        Assert.Equal(1, Probe("--protocol", "icmpv6", "--icmp-type", "160"));
        // Every denied probe was dropped by the server's ingress policy, whichever hook judged it.
        Assert.True(Drops("Policy denied by denylist") + Drops("Policy denied") - deniedBefore >= 5, "ingress drops counted");
        var flows = _s.CliOk("observe", "--verdict", "DROPPED", "--to-pod", Server, "--protocol", "udp", "--since", "5m", "-o", "json").Out
            .Split('\n', StringSplitOptions.RemoveEmptyEntries).Select(l => JsonSerializer.Deserialize(l, AgentJsonContext.Default.Flow)!);
        Assert.Contains(flows, f => f.TrafficDirection == "INGRESS" && f.Destination.PodName == "server" && f.DropReasonDesc ==
            "Policy denied by denylist");
    }

    [Theory]
    [InlineData("bpf")]
    [InlineData("legacy")]
    public void WhatTheNodeMustAnswerStillReachesIt(string mode)
    {
        Use(mode);
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        // TTL 1: the node, a router on the path, answers time exceeded.
        var ttl = InPod(client.Netns, "ping", "-c", "1", "-W", "1", "-t", "1", server.IPv4!);
        Assert.Contains("Time to live exceeded", ttl.Output, StringComparison.Ordinal);
        var hops = InPod(client.Netns, "ping", "-6", "-c", "1", "-W", "1", "-t", "1", server.IPv6!);
        Assert.Contains("Time exceeded", hops.Output, StringComparison.Ordinal);
        // Larger than the destination's link: the node answers fragmentation needed / packet too big, the sender learns it.
        Ip.Run("-n", NodeNetns, "link", "set", "dev", server.Interface, "mtu", "1280");
        try
        {
            var v4 = InPod(client.Netns, "ping", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", server.IPv4!);
            Assert.Contains("mtu = 1280", v4.Output.Replace("mtu=", "mtu = ", StringComparison.Ordinal), StringComparison.Ordinal);
            var v6 = InPod(client.Netns, "ping", "-6", "-c", "2", "-W", "1", "-M", "do", "-s", "1400", server.IPv6!);
            Assert.Contains("mtu = 1280", v6.Output.Replace("mtu=", "mtu = ", StringComparison.Ordinal), StringComparison.Ordinal);
        }
        finally
        {
            Ip.Run("-n", NodeNetns, "link", "set", "dev", server.Interface, "mtu", "1500");
            InPod(client.Netns, "ip", "route", "flush", "cache");
            InPod(client.Netns, "ip", "-6", "route", "flush", "cache");
        }
        Assert.Equal(0, Probe("--protocol", "icmp", "--icmp-type", "EchoRequest"));
    }

    [Fact]
    public void AnEndpointDeletedUnderAFloodLeavesNothingToDeliverTo()
    {
        Use("bpf");
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        using var flood = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", client.Netns, "ping", "-f", "-q", "-w", "20",
            server.IPv4!])
        { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false })!;
        try
        {
            var pod = """
                apiVersion: v1
                kind: Pod
                metadata: {name: server, namespace: e2e-a}
                """;
            Assert.Equal(0, _s.Apply(pod, "delete").Code);
            Assert.DoesNotContain(_s.CliOk("endpoint", "list").Out, Server, StringComparison.Ordinal);
            Assert.Equal(0, _s.Cli("status").Code);
            // The delivery entry went before the interface: nothing in the map points at the removed index.
            var delivery = Ip.Exec("bpftool", ["-j", "map", "dump", "pinned", Path.Combine(SandboxFixture.PinDirectory, "mb_local4")], null)
                .Replace(" ", "", StringComparison.Ordinal);
            Assert.Contains("\"ifindex\":", delivery, StringComparison.Ordinal); // the other pods' entries: the dump is readable
            Assert.DoesNotContain($"\"ifindex\":{server.Id},", delivery, StringComparison.Ordinal);
        }
        finally
        {
            flood.Kill();
            flood.WaitForExit();
        }
        _s.Reset();
        Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-host-routing", ServerPolicy), "import").Code);
        Assert.Equal(0, Probe("--protocol", "icmp", "--icmp-type", "EchoRequest"));
    }

    [Fact]
    public void ANewIdentityMidFlowMeetsTheDestinationsPolicyAtTheSource()
    {
        Use("bpf");
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        var target = IPAddress.Parse(server.IPv4!);
        Assert.True(PodTraffic.Echo(client.Netns, target, 0x4e01));
        // The client's labels change: its identity changes, and the server's policy no longer admits it.
        Assert.Equal(0, _s.Apply("""
            apiVersion: v1
            kind: Pod
            metadata: {name: client, namespace: e2e-a, labels: {app: renamed}}
            spec: {containers: [{name: c, image: busybox}]}
            """).Code);
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x4e01), "the same echo id after the identity change");
        Assert.False(PodTraffic.Echo(client.Netns, target, 0x4e02), "a new echo after the identity change");
    }

    [Fact]
    public void APolicyChangeCutsABusyEchoThatRodeTheShortcut()
    {
        // ICMP echo: the server's replies open nothing (only a request opens a query's entry), so once the server's side
        // is forgotten, nothing but its policy can admit the client's next request. (A TCP server that keeps sending
        // opens an egress entry of its own, which then admits the client's segments as replies: a connection the
        // server may open is not cut by its ingress policy, with or without the shortcut.)
        Use("bpf");
        EndpointOutput client = _s.Endpoint(Client), server = _s.Endpoint(Server);
        var target = IPAddress.Parse(server.IPv4!);
        _s.CliOk("bpf", "ct", "flush");
        // Echoes back to back with one id: most requests follow the query's previous packet within a tick. Without the
        // shortcut the server's entry counts each request and each reply (2 per echo); with it, its replies and what
        // its check saw of the requests (one a tick at least).
        const int Echoes = 1_000, Id = 0x4e10;
        for (var echo = 0; echo < Echoes; echo++)
        {
            Assert.True(PodTraffic.Echo(client.Netns, target, Id), $"echo {echo}");
        }
        var entries = JsonSerializer.Deserialize(_s.CliOk("bpf", "ct", "list", "-o", "json").Out,
            AgentJsonContext.Default.ListConntrackOutput)!.Where(e => e.Protocol == "ICMP").ToList();
        var serverSide = Assert.Single(entries, e => e.Endpoint == Server);
        Assert.True(serverSide.Packets < 2 * Echoes, $"the server's entry saw {serverSide.Packets} packets: no shortcut taken");

        // Busy again while the server's policy changes.
        var echoes = 0;
        var stop = false;
        var busy = new Thread(() =>
        {
            while (!Volatile.Read(ref stop) && PodTraffic.Echo(client.Netns, target, Id))
            {
                Interlocked.Increment(ref echoes);
            }
        });
        busy.Start();
        int atChange;
        try
        {
            var deadline = Stopwatch.StartNew();
            while (Volatile.Read(ref echoes) < 300 && busy.IsAlive && deadline.Elapsed < TimeSpan.FromSeconds(20))
            {
                Thread.Sleep(5);
            }
            Assert.True(Volatile.Read(ref echoes) >= 300, $"only {echoes} echoes before the change");
            var generation = Generation();
            Assert.Equal(0, _s.Apply(SandboxFixture.Cnp("server-deny-echo", """
                endpointSelector: {matchLabels: {app: server}}
                ingressDeny:
                - fromEndpoints: [{matchLabels: {app: client}}]
                  icmps: [{fields: [{type: EchoRequest}]}]
                """), "import").Code);
            atChange = Volatile.Read(ref echoes);
            // The shortcut earned before the change ended with it: the agent advanced the generation from_pod compares.
            Assert.NotEqual(generation, Generation());
        }
        finally
        {
            Volatile.Write(ref stop, true);
            Assert.True(busy.Join(TimeSpan.FromSeconds(10)), "the busy echo loop did not end");
        }
        // At most the echo in flight when the change landed completes; nothing after it.
        Assert.InRange(Volatile.Read(ref echoes) - atChange, 0, 1);
        Assert.False(PodTraffic.Echo(client.Netns, target, Id), "the echo is still answered after the deny");
    }

    /// <summary>The configuration generation in the agent's pinned mb_config, as bpftool reads it (with its BTF).</summary>
    private static uint Generation()
    {
        var json = Ip.Exec("bpftool", ["-j", "map", "dump", "pinned", $"{SandboxFixture.PinDirectory}/mb_config"], null);
        using var document = JsonDocument.Parse(json);
        var entry = document.RootElement[0];
        // With BTF, bpftool -j gives the raw bytes and the typed value under "formatted".
        var value = (entry.TryGetProperty("formatted", out var formatted) ? formatted : entry).GetProperty("value");
        return value.GetProperty("generation").GetUInt32();
    }

    private ulong Drops(string reason)
    {
        var status = JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out, AgentJsonContext.Default.StatusResponse)!;
        return status.Drops.GetValueOrDefault(reason);
    }
}
