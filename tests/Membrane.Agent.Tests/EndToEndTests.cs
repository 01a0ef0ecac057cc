using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// Real namespaces, real ping, ping6, TCP and UDP, through the real CLI and agent. Every flow check asks both the
/// probe (real traffic) and the trace (the policy engine), and requires both to give the expected verdict.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class EndToEndTests
{
    private readonly SandboxFixture _s;

    public EndToEndTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private const string Client = "e2e-a/client", Server = "e2e-a/server", Other = "e2e-b/other";

    private static string[] Icmp(int type, int? code = null, bool v6 = false) =>
        [.. new[] { "--protocol", v6 ? "icmpv6" : "icmp", "--icmp-type", $"{type}" }, .. code is { } c ? new[] { "--icmp-code", $"{c}" }
            : []];

    private static string[] Tcp(int port) => ["--protocol", "tcp", "--port", $"{port}"];

    private static string[] Udp(int port) => ["--protocol", "udp", "--port", $"{port}"];

    /// <summary>The probe and the trace must both give <paramref name="allowed"/>.</summary>
    private void Flow(string from, string to, bool allowed, params string[] flow)
    {
        var probe = _s.Cli(["connectivity", "probe", "--from", from, "--to", to, .. flow, "--timeout", "700", "-o", "json"]);
        Assert.True(probe.Code is 0 or 1, $"probe failed: {probe.Err}");
        var result = JsonSerializer.Deserialize(probe.Out, AgentJsonContext.Default.ProbeResult)!;
        var trace = _s.Cli(["policy", "trace", "--from", from, "--to", to, .. flow, "-o", "json"]);
        var verdict = JsonSerializer.Deserialize(trace.Out, AgentJsonContext.Default.TraceOutput)!.Verdict;
        var what = $"{from} -> {to} {string.Join(' ', flow)}";
        Assert.True((result.Result == "allowed") == allowed, $"{what}: probe says {result.Result} ({result.Detail})");
        Assert.True((verdict == "ALLOWED") == allowed, $"{what}: trace says {verdict}");
        Assert.Equal(allowed ? 0 : 1, probe.Code);
        Assert.Equal(allowed ? 0 : 1, trace.Code);
    }

    /// <summary>Polls <paramref name="condition"/> until it holds, failing after a generous deadline.</summary>
    private static void WaitUntil(Func<bool> condition, string what, int seconds = 20)
    {
        var deadline = DateTime.UtcNow.AddSeconds(seconds);
        while (!condition())
        {
            Assert.True(DateTime.UtcNow < deadline, $"timed out after {seconds} s waiting for {what}");
            Thread.Sleep(50);
        }
    }

    /// <summary>The system's own ping, from inside the pod.</summary>
    private bool Ping(string from, string to, bool v6 = false)
    {
        var source = _s.Endpoint(from);
        var target = _s.Endpoint(to);
        var r = RunIn(source.Netns, "ping", v6 ? "-6" : "-4", "-c", "1", "-W", "1", (v6 ? target.IPv6 : target.IPv4)!);
        return r == 0;
    }

    private static int RunIn(string netns, params string[] command)
    {
        var start = new ProcessStartInfo("ip") { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in new[] { "netns", "exec", netns }.Concat(command))
        {
            start.ArgumentList.Add(a);
        }
        using var p = Process.Start(start)!;
        p.StandardOutput.ReadToEnd();
        p.WaitForExit();
        return p.ExitCode;
    }

    private void Import(string yaml)
    {
        var r = _s.Apply(yaml, "import");
        Assert.True(r.Code == 0, r.Err);
    }

    private static string Cnp(string name, string spec) => SandboxFixture.Cnp(name, spec);

    private const string HttpOnly = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """;

    private const string AllowPing = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
        """;

    [Fact]
    public void TheOriginalStory_IPv4AndIPv6()
    {
        Assert.True(Ping(Client, Server));
        Assert.True(Ping(Client, Server, v6: true));
        // Each ping is a connection of the client (egress) and of the server (ingress), in its family's map.
        var ct = JsonDocument.Parse(_s.CliOk("bpf", "ct", "list", "-o", "json").Out).RootElement.EnumerateArray().ToList();
        foreach (var (endpoint, direction) in new[] { (Client, "egress"), (Server, "ingress") })
        {
            foreach (var protocol in new[] { "ICMP", "ICMPv6" })
            {
                Assert.Contains(ct, c => c.GetProperty("endpoint").GetString() == endpoint && c.GetProperty("protocol")
                    .GetString() == protocol
                    && c.GetProperty("direction").GetString() == direction && c.GetProperty("ageSeconds").GetDouble() is >= 0 and < 60);
            }
        }
        List<JsonElement> CtOf(string endpoint) =>
            JsonDocument.Parse(_s.CliOk("bpf", "ct", "list", "--endpoint", endpoint, "-o", "json").Out).RootElement.EnumerateArray()
                .ToList();
        var server = CtOf(Server);
        Assert.True(server.Count >= 2 && server.All(c => c.GetProperty("endpoint").GetString() == Server),
            "--endpoint shows that endpoint only");
        var flushed = JsonDocument.Parse(_s.CliOk("bpf", "ct", "flush", "--endpoint", Client, "-o", "json").Out).RootElement;
        Assert.True(flushed.GetProperty("removed").GetInt32() >= 2);
        Assert.Empty(CtOf(Client));
        Assert.Equal(server.Count, CtOf(Server).Count);
        var unknown = _s.Cli("bpf", "ct", "flush", "--endpoint", "e2e-a/nobody");
        Assert.True(unknown.Code == 1 && unknown.Err.Contains("no endpoint", StringComparison.Ordinal), unknown.Err);

        // The kernel's ipcache maps each pod's /32 and /128 to the pod's identity.
        var ipcache = JsonDocument.Parse(_s.CliOk("bpf", "ipcache", "list", "-o", "json").Out).RootElement.EnumerateArray().ToList();
        var client = ipcache.Where(e => e.GetProperty("name").GetString() == Client).ToList();
        Assert.Equal(["/128", "/32"], client.Select(e => e.GetProperty("prefix").GetString()![e.GetProperty("prefix")
            .GetString()!.IndexOf('/', StringComparison.Ordinal)..]).Order(StringComparer.Ordinal));
        Assert.Single(client.Select(e => e.GetProperty("identity").GetUInt32()).Distinct());
        Flow(Client, Server, true, Icmp(8));
        Flow(Client, Server, true, Udp(53));

        Import(Cnp("http-only", HttpOnly));
        Assert.False(Ping(Client, Server), "an L4 policy drops ping");
        Assert.False(Ping(Client, Server, v6: true), "and ping6");
        Flow(Client, Server, true, Tcp(80));
        Flow(Client, Server, false, Icmp(8));
        Flow(Client, Server, false, Icmp(128, v6: true));
        Flow(Client, Server, false, Udp(53));

        Import(Cnp("allow-ping", AllowPing));
        Assert.True(Ping(Client, Server), "icmps allows ping again");
        Assert.True(Ping(Client, Server, v6: true), "and ping6");
        Flow(Client, Server, true, Icmp(8));
        Flow(Client, Server, true, Icmp(128, v6: true));
        Flow(Client, Server, true, [.. Tcp(80), "--family", "ipv6"]);
        Flow(Client, Server, false, Icmp(13));
        Flow(Client, Server, false, Tcp(22));
        Flow(Other, Server, false, Icmp(8));
    }

    [Fact]
    public void DenyRuleForIcmpBeatsAnL3Allow()
    {
        Import(Cnp("allow-all-from-client",
            "endpointSelector: {matchLabels: {app: server}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}]}]"));
        Import(Cnp("deny-ping",
            "endpointSelector: {matchLabels: {app: server}}\ningressDeny: [{icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, " +
            "family: IPv6}]}]}]"));
        Assert.False(Ping(Client, Server));
        Assert.False(Ping(Client, Server, v6: true));
        Flow(Client, Server, false, Icmp(8));
        Flow(Client, Server, true, Tcp(80));
        Flow(Client, Server, true, Icmp(13));
    }

    /// <summary>
    /// The reference system's connectivity deny cases: allow-all (every endpoint and every CIDR, 0.0.0.0/0 and ::/0
    /// included) both ways, plus deny rules. The CIDR 0.0.0.0/0 is the world prefix too; a plan holding it twice
    /// was refused with "An item with the same key has already been added" (issue 23's regression).
    /// </summary>
    [Fact]
    public void AllowAllCombinedWithDenyRulesIsEnforced()
    {
        const string Ccnp = "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: NAME}\nspec:\n";
        Import(Ccnp.Replace("NAME", "allow-all", StringComparison.Ordinal) + """
              endpointSelector: {}
              ingress: [{fromEndpoints: [{}]}, {fromCIDR: [0.0.0.0/0, "::/0"]}]
              egress: [{toEndpoints: [{}]}, {toCIDR: [0.0.0.0/0, "::/0"]}]
            """);
        Assert.True(Ping(Client, Server));
        Import(Cnp("deny-ping", """
            endpointSelector: {matchLabels: {app: server}}
            ingressDeny: [{icmps: [{fields: [{type: EchoRequest}, {type: EchoRequest, family: IPv6}]}]}]
            """));
        Import(Ccnp.Replace("NAME", "deny-other", StringComparison.Ordinal) + """
              endpointSelector: {matchLabels: {app: other}}
              egressDeny: [{toEndpoints: [{matchLabels: {app: server}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """);
        Assert.False(Ping(Client, Server));
        Assert.False(Ping(Client, Server, v6: true));
        Flow(Client, Server, false, Icmp(8));
        Flow(Client, Server, true, Tcp(80));
        Flow(Client, Server, true, Icmp(13));
        Flow(Other, Server, false, Tcp(80));
        Flow(Other, Server, true, Udp(53));
        // The world prefix maps to the policy's CIDR identity, once, in the kernel's ipcache.
        var ipcache = JsonDocument.Parse(_s.CliOk("bpf", "ipcache", "list", "-o", "json").Out).RootElement.EnumerateArray().ToList();
        Assert.Single(ipcache, e => e.GetProperty("prefix").GetString() == "0.0.0.0/0");
        _s.CliOk("policy", "delete", "e2e-a/deny-ping");
        Assert.True(Ping(Client, Server));
    }

    [Fact]
    public void TypeZeroDoesNotAllowEchoRequests()
    {
        Import(Cnp("type-zero", "endpointSelector: {matchLabels: {app: server}}\ningress: [{icmps: [{fields: [{type: 0}]}]}]"));
        Assert.False(Ping(Client, Server));
        Flow(Client, Server, false, Icmp(8));
        Flow(Client, Server, true, Icmp(0));
    }

    [Fact]
    public void IcmpCodeRuleMatchesOnlyItsCode()
    {
        Import(Cnp("frag-needed", "endpointSelector: {matchLabels: {app: server}}\ningress: [{icmps: [{fields: [{type: 3, code: 4}]}]}]"));
        Flow(Client, Server, true, Icmp(3, 4));
        Flow(Client, Server, false, Icmp(3, 1));
        Flow(Client, Server, false, Icmp(8));
    }

    [Fact]
    public void NeighbourDiscoveryWorksUnderDenyAll()
    {
        // Both pods deny everything but IPv6 echo between them; nothing allows neighbour discovery explicitly.
        Import(Cnp("client-lockdown", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{}]
            egress: [{toEndpoints: [{matchLabels: {app: server}}], icmps: [{fields: [{type: 128, family: IPv6}]}]}]
            """));
        Import(Cnp("server-lockdown", """
            endpointSelector: {matchLabels: {app: server}}
            egress: [{}]
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 128, family: IPv6}]}]}]
            """));
        var client = _s.Endpoint(Client);
        var server = _s.Endpoint(Server);
        Ip.Run("-n", client.Netns, "neigh", "flush", "all");
        Ip.Run("-n", server.Netns, "neigh", "flush", "all");
        Ip.Run("-n", $"{SandboxFixture.Prefix}-node", "neigh", "flush", "all");
        Assert.True(Ping(Client, Server, v6: true), "ping6 needs neighbour solicitation/advertisement in both pods");
        Assert.False(Ping(Client, Server), "IPv4 stays denied");
        Assert.Contains("REACHABLE", Ip.Run("-n", client.Netns, "-6", "neigh", "show"), StringComparison.Ordinal);
    }

    /// <summary>
    /// A timestamp query (ICMP 13) the client may send comes back (14, answered by the server's kernel) through a
    /// client that accepts nothing: tracked like echo, by kind and identifier.
    /// </summary>
    [Fact]
    public void TimestampRepliesPassByConntrackLikeEchoReplies()
    {
        Import(Cnp("client-timestamps-only", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{}]
            egress: [{toEndpoints: [{matchLabels: {app: server}}], icmps: [{fields: [{type: Timestamp}]}]}]
            """));
        var client = _s.Endpoint(Client);
        var target = IPAddress.Parse(_s.Endpoint(Server).IPv4!);
        using var socket = NetworkNamespace.Run(client.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw,
            ProtocolType.Icmp));
        socket.ReceiveTimeout = 1500;
        bool Answered(byte type, ushort id)
        {
            var request = Membrane.Agent.Probes.Prober.IcmpPacket(type, 0, id, v6: false);
            socket.SendTo(request, new IPEndPoint(target, 0));
            var buffer = new byte[1500];
            var deadline = DateTime.UtcNow.AddMilliseconds(1500);
            while (DateTime.UtcNow < deadline)
            {
                int n;
                try
                {
                    n = socket.Receive(buffer);
                }
                catch (SocketException)
                {
                    return false;
                }
                var icmp = buffer.AsSpan((buffer[0] & 0x0f) * 4, n - (buffer[0] & 0x0f) * 4);
                if (icmp.Length >= 8 && icmp[0] == type + (type == 8 ? -8 : 1) && (icmp[4] << 8 | icmp[5]) == id)
                {
                    return true;
                }
            }
            return false;
        }
        Assert.True(Answered(13, 4242), "the timestamp reply did not come back");
        Assert.False(Answered(8, 4243), "echo is not allowed by this policy");
        Flow(Client, Server, true, Icmp(13));
        Flow(Client, Server, false, Icmp(8));
    }

    [Theory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task PathMtuDiscoveryWorksUnderAnIngressPolicy(bool v6)
    {
        // The client accepts nothing; the node (the router between the pods) has a smaller MTU towards the server
        // and answers the client's full-size segments with fragmentation-needed / Packet Too Big from its own address.
        Import(Cnp("client-closed", """
            endpointSelector: {matchLabels: {app: client}}
            ingress: [{}]
            egress: [{toEndpoints: [{matchLabels: {app: server}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """));
        var server = _s.Endpoint(Server);
        var client = _s.Endpoint(Client);
        Ip.Run("-n", $"{SandboxFixture.Prefix}-node", "link", "set", server.Interface, "mtu", "1280");
        Ip.Run("-n", server.Netns, "link", "set", "eth0", "mtu", "1280");
        Ip.Run("-n", client.Netns, "route", "flush", "cache");
        try
        {
            var target = IPAddress.Parse(v6 ? server.IPv6! : server.IPv4!);
            var payload = new byte[1 << 20];
            Random.Shared.NextBytes(payload);
            using var socket = NetworkNamespace.Run(client.Netns, () => new Socket(target.AddressFamily, SocketType.Stream,
                ProtocolType.Tcp));
            socket.ReceiveTimeout = 20_000;
            socket.SendTimeout = 20_000;
            socket.Connect(target, 80);
            var echoed = new byte[payload.Length];
            var reader = Task.Run(() =>
            {
                var total = 0;
                while (total < echoed.Length)
                {
                    var n = socket.Receive(echoed, total, echoed.Length - total, SocketFlags.None);
                    if (n == 0)
                    {
                        break;
                    }
                    total += n;
                }
                return total;
            });
            socket.Send(payload);
            var finished = await Task.WhenAny(reader, Task.Delay(TimeSpan.FromSeconds(30))) == reader;
            Assert.True(finished, "the transfer stalled: path-MTU errors did not reach the client");
            Assert.Equal(payload.Length, await reader);
            Assert.Equal(payload, echoed);
        }
        finally
        {
            Ip.Run("-n", $"{SandboxFixture.Prefix}-node", "link", "set", server.Interface, "mtu", "1500");
            Ip.Run("-n", server.Netns, "link", "set", "eth0", "mtu", "1500");
        }
    }

    [Fact]
    public void PolicyUpdateWhileTrafficFlowsChangesTheVerdict()
    {
        var client = _s.Endpoint(Client);
        var server = _s.Endpoint(Server);
        var ping = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", client.Netns, "ping", "-D", "-i", "0.05", "-c", "80", "-W",
            "1", server.IPv4!])
        { RedirectStandardOutput = true, UseShellExecute = false })!;
        var lines = new List<string>();
        ping.OutputDataReceived += (_, e) => { if (e.Data is not null) { lock (lines) { lines.Add(e.Data); } } };
        ping.BeginOutputReadLine();
        WaitUntil(() =>
        {
            lock (lines)
            {
                return lines.Count(l => l.Contains("bytes from", StringComparison.Ordinal)) >= 10;
            }
        }, "ten replies before the change");
        Import(Cnp("deny-ping", "endpointSelector: {matchLabels: {app: server}}\ningressDeny: [{icmps: [{fields: [{type: 8}]}]}]"));
        var enforcedAt = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds() / 1000.0;
        ping.WaitForExit();
        List<double> replies;
        lock (lines)
        {
            replies = lines.Where(l => l.Contains("bytes from", StringComparison.Ordinal))
                .Select(l => double.Parse(l[1..l.IndexOf(']', StringComparison.Ordinal)],
                    System.Globalization.CultureInfo.InvariantCulture)).ToList();
        }
        Assert.True(replies.Count(t => t < enforcedAt) >= 10, "ping worked before the change");
        Assert.DoesNotContain(replies, t => t > enforcedAt + 0.01);
        Flow(Client, Server, false, Icmp(8));
    }

    [Fact]
    public void PodAndNamespaceLabelChangesReIdentifyLive()
    {
        Import(Cnp("trusted-only",
            "endpointSelector: {matchLabels: {app: server}}\ningress: [{fromEndpoints: [{matchLabels: {trust: high}}]}]"));
        Flow(Client, Server, false, Icmp(8));
        var before = _s.Endpoint(Client).Identity;
        Assert.Equal(0, _s.Apply("apiVersion: v1\nkind: Pod\nmetadata: {name: client, namespace: e2e-a, labels: {app: client, trust: " +
            "high}}\nspec: {containers: [{name: c, image: busybox}]}\n").Code);
        Assert.NotEqual(before, _s.Endpoint(Client).Identity);
        Assert.True(Ping(Client, Server));
        Flow(Client, Server, true, Icmp(8));

        var fromTeamB = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: team-b-vip, namespace: e2e-a}\nspec:\n  " +
            "endpointSelector: {matchLabels: {app: server}}\n  ingress: [{fromEndpoints: [{matchLabels: " +
            "{io.cilium.k8s.namespace.labels.vip: \"yes\"}}]}]\n";
        Import(fromTeamB);
        Flow(Other, Server, false, Icmp(8));
        Assert.Equal(0, _s.Apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: e2e-b, labels: {team: b, vip: \"yes\"}}\n").Code);
        Flow(Other, Server, true, Icmp(8));
    }

    [Fact]
    public void KillMinusNineAndRestartKeepsEnforcing()
    {
        Import(Cnp("http-only", HttpOnly));
        Import(Cnp("allow-ping", AllowPing));
        var client = _s.Endpoint(Client);
        var server = _s.Endpoint(Server);
        var other = _s.Endpoint(Other);
        var allowed = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", client.Netns, "ping", "-i", "0.1", "-c", "50", "-W", "1",
            server.IPv4!])
        { RedirectStandardOutput = true, UseShellExecute = false })!;
        var denied = Process.Start(new ProcessStartInfo("ip", ["netns", "exec", other.Netns, "ping", "-i", "0.1", "-c", "50", "-W", "1",
            server.IPv4!])
        { RedirectStandardOutput = true, UseShellExecute = false })!;
        var replies = 0;
        var allowedOut = new System.Text.StringBuilder();
        allowed.OutputDataReceived += (_, e) =>
        {
            lock (allowedOut)
            {
                allowedOut.AppendLine(e.Data);
                replies += e.Data?.Contains("bytes from", StringComparison.Ordinal) == true ? 1 : 0;
            }
        };
        allowed.BeginOutputReadLine();
        int Replies()
        {
            lock (allowedOut)
            {
                return replies;
            }
        }
        WaitUntil(() => Replies() >= 5, "five replies before the kill");
        _s.KillAgent();
        // The agent is gone: the kernel keeps enforcing with the pinned maps, replies keep coming.
        var atKill = Replies();
        WaitUntil(() => Replies() >= atKill + 10, "ten replies while the agent is down");
        _s.StartAgent();
        var deniedOut = denied.StandardOutput.ReadToEnd();
        allowed.WaitForExit();
        denied.WaitForExit();
        Assert.Contains("50 received", allowedOut.ToString(), StringComparison.Ordinal);
        Assert.Contains(" 0 received", deniedOut, StringComparison.Ordinal);
        Flow(Client, Server, true, Icmp(8));
        Flow(Other, Server, false, Icmp(8));
        Assert.Contains("CiliumNetworkPolicy/e2e-a/allow-ping", _s.CliOk("policy", "get").Out, StringComparison.Ordinal);
    }

    [Fact]
    public void BadInputIsRefusedAndChangesNothing()
    {
        Import(Cnp("http-only", HttpOnly));
        var before = _s.CliOk("policy", "get", "-o", "json").Out;

        var invalid = _s.Apply(Cnp("bad", "endpointSelector: {}\ningress: [{icmps: [{fields: [{type: Nope}]}]}]"), "import");
        Assert.Equal(1, invalid.Code);
        Assert.Contains("spec.ingress[0].icmps[0].fields[0].type: \"Nope\" is not an ICMP type of family IPv4", invalid.Err,
            StringComparison.Ordinal);

        var malformed = _s.Apply("apiVersion: v1\nkind: Pod\nmetadata: {name: x\n");
        Assert.Equal(1, malformed.Code);
        Assert.Contains("malformed YAML", malformed.Err, StringComparison.Ordinal);

        var conflicting = _s.Apply("apiVersion: v1\nkind: Pod\nmetadata: {name: server, namespace: e2e-a, labels: {app: server}}\nspec: " +
            "{containers: [{name: s, ports: [{containerPort: 9999}]}]}\n");
        Assert.Equal(1, conflicting.Code);
        Assert.Contains("conflicts with the running pod", conflicting.Err, StringComparison.Ordinal);

        var noNamespace = _s.Apply("apiVersion: v1\nkind: Pod\nmetadata: {name: lost, namespace: nowhere}\nspec: {containers: [{name: " +
            "c}]}\n");
        Assert.Equal(1, noNamespace.Code);
        Assert.Contains("namespace \"nowhere\" does not exist", noNamespace.Err, StringComparison.Ordinal);

        var unknownPod = _s.Cli("policy", "trace", "--from", "e2e-a/nobody", "--to", Server, "--protocol", "tcp", "--port", "80");
        Assert.Equal(1, unknownPod.Code);
        Assert.Contains("no pod e2e-a/nobody", unknownPod.Err, StringComparison.Ordinal);

        var missing = _s.Apply(Cnp("never-applied", "endpointSelector: {}\ningress: [{}]"), "delete");
        Assert.Equal(1, missing.Code);
        Assert.Contains("not found", missing.Err, StringComparison.Ordinal);

        Assert.Equal(before, _s.CliOk("policy", "get", "-o", "json").Out);
        Assert.Equal(3, JsonSerializer.Deserialize(_s.CliOk("endpoint", "list", "-o", "json").Out,
            AgentJsonContext.Default.ListEndpointOutput)!.Count);
        Flow(Client, Server, true, Tcp(80));
    }

    [Fact]
    public async Task ApiRejectsBadInputWithErrorsAndChangesNothing()
    {
        using var client = new AgentClient(SandboxFixture.Socket);
        var before = (await client.Get("v1/status", AgentJsonContext.Default.StatusResponse)).Revision;
        var error = await Assert.ThrowsAsync<AgentRequestException>(() => client.Post("v1/apply",
            new ManifestRequest("kind: CiliumNetworkPolicy\napiVersion: cilium.io/v2\nmetadata: {name: x}\nspec: {endpointSelector: {}, " +
            "ingress: [{toPorts: [{ports: [{port: \"99999\"}]}]}]}\n", "api.yaml"),
            AgentJsonContext.Default.ManifestRequest, AgentJsonContext.Default.ApplyResponse));
        Assert.Equal("spec.ingress[0].toPorts[0].ports[0].port", Assert.Single(error.Response.Errors).Path);
        Assert.Equal(before, (await client.Get("v1/status", AgentJsonContext.Default.StatusResponse)).Revision);
    }

    [Fact]
    public void MatrixOfNinePodsAndFourProbeKindsAgreesWithTrace()
    {
        var extra = string.Join("\n---\n", Enumerable.Range(1, 6).Select(i =>
            $"apiVersion: v1\nkind: Pod\nmetadata: {{name: m{i}, namespace: e2e-b, labels: {{app: m{i % 2}}}}}\nspec: {{containers: " +
                $"[{{name: c, ports: [{{containerPort: 80}}, {{containerPort: 53, protocol: UDP}}]}}]}}"));
        Assert.Equal(0, _s.Apply(extra).Code);
        try
        {
            Import(Cnp("http-only", HttpOnly));
            var watch = Stopwatch.StartNew();
            var matrix = JsonSerializer.Deserialize(_s.CliOk("connectivity", "matrix", "-o", "json").Out,
                AgentJsonContext.Default.MatrixResponse)!;
            watch.Stop();
            Assert.Equal(9, matrix.Pods.Count);
            Assert.Equal(9 * 8 * 4, matrix.Results.Count);
            // A hang guard, not a timing (the cluster tests run beside these on the same two cores; speed is benchmarked).
            Assert.True(watch.Elapsed < TimeSpan.FromSeconds(120), $"matrix took {watch.Elapsed}");
            foreach (var r in matrix.Results.Where(r => r.To == Server))
            {
                var expected = r.From == Client && r.Protocol == "tcp";
                Assert.True((r.Result == "allowed") == expected, $"{r.From} -> {r.To} {r.Protocol}: {r.Result}");
            }
            Assert.All(matrix.Results.Where(r => r.To != Server), r => Assert.Equal("allowed", r.Result));
        }
        finally
        {
            Assert.Equal(0, _s.Apply(extra, "delete").Code);
        }
    }
}
