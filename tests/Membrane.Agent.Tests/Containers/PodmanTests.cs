using Membrane.Policy.Identity;
using static Membrane.Agent.Tests.Containers.CniAgentFixture;

namespace Membrane.Agent.Tests.Containers;

/// <summary>
/// Real podman containers (<c>podman kube play</c>) on a network whose conflist uses membrane-cni: the seed's story
/// (ping, ping6 and TCP allowed and denied as CNP and KNP with icmps rules say) on real containers, labels from Pod
/// objects or the init identity, chained mode, an agent killed while containers run, and nothing left behind.
/// </summary>
[Collection(CniAgentGroup.Name)]
public sealed class PodmanTests(CniAgentFixture fixture)
{
    private const string Pods = """
        apiVersion: v1
        kind: Pod
        metadata: {name: client, labels: {app: client}}
        spec:
          containers:
          - {name: main, image: localhost/membrane-e2e:1, command: [sleep, "3600"]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: web, labels: {app: web}}
        spec:
          containers:
          - name: main
            image: localhost/membrane-e2e:1
            command: [nc, -ll, -p, "80", -e, cat]
            ports: [{name: http, containerPort: 80}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: intruder, labels: {app: intruder}}
        spec:
          containers:
          - {name: main, image: localhost/membrane-e2e:1, command: [sleep, "3600"]}
        """;

    /// <summary>Echo requests of both families and TCP to the named port, from app=client only (CNP), and a KNP on top.</summary>
    private const string Policies = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-from-client, namespace: default}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            icmps: [{fields: [{type: EchoRequest, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: http, protocol: TCP}]}]
        ---
        apiVersion: networking.k8s.io/v1
        kind: NetworkPolicy
        metadata: {name: intruder-egress, namespace: default}
        spec:
          podSelector: {matchLabels: {app: intruder}}
          policyTypes: [Egress]
          egress: []
        """;

    private static void RemovePods() => Podman("pod", "rm", "--force", "--time", "0", "--ignore", "client", "web", "intruder");

    /// <summary>The container's IPv4 echo requests received (InEchos of /proc/net/snmp, its network namespace's).</summary>
    private static long EchoRequestsReceived(string container)
    {
        var lines = Podman("exec", container, "cat", "/proc/net/snmp").Split('\n')
            .Where(l => l.StartsWith("Icmp:", StringComparison.Ordinal)).Select(l => l.Split(' ', StringSplitOptions.RemoveEmptyEntries))
            .ToList();
        return long.Parse(lines[1][Array.IndexOf(lines[0], "InEchos")], System.Globalization.CultureInfo.InvariantCulture);
    }

    private static bool Ping(string from, string to) => InContainer($"{from}-main", "ping", "-c1", "-W1", to);

    private static bool Tcp(string from, string to) => InContainer($"{from}-main", "sh", "-c", $"echo hi | nc -w1 {to} 80 | grep -q hi");

    [Fact]
    public async Task PolicyIsEnforcedOnRealContainersAndRemovingThemLeavesNothing()
    {
        var pods = Write("pods.yaml", Pods);
        var policies = Write("policies.yaml", Policies);
        try
        {
            Podman("kube", "play", "--network", Network, pods);
            // No Pod objects yet: the runtime's containers have the reserved init identity.
            Assert.All(["default/client", "default/web", "default/intruder"],
                p => Assert.Equal(ReservedIdentities.Init, Endpoint(p).Identity));

            Mb("apply", "-f", pods); // the same manifest: now the agent knows their labels
            Mb("policy", "import", policies);
            var web = Endpoint("default/web");
            Assert.NotEqual(ReservedIdentities.Init, web.Identity);
            Assert.True(web.IngressEnforced);

            Assert.True(Ping("client", web.IPv4!), "client → web ping");
            Assert.True(InContainer("client-main", "ping6", "-c1", "-W1", web.IPv6!), "client → web ping6");
            Assert.True(Tcp("client", web.IPv4!), "client → web TCP 80");
            Assert.False(Ping("intruder", web.IPv4!), "intruder → web ping (KNP: no egress)");
            Assert.False(Tcp("intruder", web.IPv4!), "intruder → web TCP 80");
            var client = Endpoint("default/client");
            // A hostile container (privileged exec: it may add addresses) takes the allowed client's address: still dropped.
            // The reply would go to the real client either way: what counts is whether web received the request.
            var echoes = EchoRequestsReceived("web-main");
            Assert.True(Ping("client", web.IPv4!));
            Assert.Equal(echoes + 1, EchoRequestsReceived("web-main"));
            Podman("exec", "--privileged", "intruder-main", "ip", "addr", "add", $"{client.IPv4}/32", "dev", "eth0");
            InContainer("intruder-main", "ping", "-c1", "-W1", "-I", client.IPv4!, web.IPv4!);
            Podman("exec", "--privileged", "intruder-main", "ip", "addr", "del", $"{client.IPv4}/32", "dev", "eth0");
            Assert.Equal(echoes + 1, EchoRequestsReceived("web-main")); // the spoofed request never reached web
            Assert.True(Ping("web", client.IPv4!), "web → client ping (client has no policy)");

            // The CLI works on them as on sandbox pods.
            var denied = CniAgentFixture.Cli("policy", "trace", "--from", "default/intruder", "--to", "default/web", "--protocol", "icmp",
                "--icmp-type", "8");
            Assert.True(denied.Code == 1 && denied.Out.Contains("DENIED", StringComparison.Ordinal), denied.Out + denied.Err);
            Assert.Contains("ALLOWED", Mb("policy", "trace", "--from", "default/client", "--to", "default/web", "--protocol",
                "tcp", "--port", "80"));
            Assert.Contains(client.IPv4!, Mb("bpf", "ct", "list", "--endpoint", "default/web"));
            Assert.Contains("ALLOW", Mb("bpf", "policy", "get", "default/web"), StringComparison.OrdinalIgnoreCase);
            Assert.Equal(0, CniAgentFixture.Cli("connectivity", "probe", "--from", "default/client", "--to", "default/web", "--protocol",
                "icmp", "--icmp-type", "EchoRequest").Code);
            Assert.Equal(1, CniAgentFixture.Cli("connectivity", "probe", "--from", "default/intruder", "--to", "default/web",
                "--protocol", "tcp", "--port", "80").Code);
            // The monitor names the container that sent a dropped packet.
            var monitor = Task.Run(() => CniAgentFixture.Cli("monitor", "--count", "1", "-o", "json"));
            var deadline = DateTime.UtcNow.AddSeconds(20);
            while (!monitor.IsCompleted && DateTime.UtcNow < deadline)
            {
                Ping("intruder", web.IPv4!);
            }
            Assert.True(monitor.IsCompleted, "the monitor saw no drop within 20 s");
            Assert.Contains("default/intruder", (await monitor).Out, StringComparison.Ordinal);

            // Without the CNP, the web pod is open again: the change is live on running containers.
            Mb("policy", "delete", "web-from-client");
            Assert.False(Endpoint("default/web").IngressEnforced);
        }
        finally
        {
            RemovePods();
            CniAgentFixture.Cli("policy", "delete", "--all");
            CniAgentFixture.Cli("delete", "-f", pods);
        }
        Assert.Empty(AllEndpoints());
        Assert.Empty(OwnInterfaces());
        Assert.Equal("", PodRoutes());
        Assert.DoesNotContain("10.201.", Mb("bpf", "ipcache", "list"), StringComparison.Ordinal);
    }

    [Fact]
    public void ChainedAfterBridgeTheEndpointHasTheBridgesAddressesAndPolicyApplies()
    {
        var pods = Write("chained.yaml", Pods);
        try
        {
            Mb("apply", "-f", pods);
            Podman("kube", "play", "--network", ChainedNetwork, pods);
            var web = Endpoint("default/web");
            Assert.StartsWith("10.211.0.", web.IPv4, StringComparison.Ordinal);
            Assert.DoesNotContain(web.Interface, OwnInterfaces()); // the bridge plugin's veth, not the agent's
            Assert.True(Ping("client", web.IPv4!));
            Assert.True(Ping("intruder", web.IPv4!));
            Mb("policy", "import", Write("chained-policy.yaml", Policies));
            Assert.True(Ping("client", web.IPv4!), "client → web ping, chained");
            Assert.False(Ping("intruder", web.IPv4!), "intruder → web ping, chained");
            Assert.True(Tcp("client", web.IPv4!), "client → web TCP 80, chained");
        }
        finally
        {
            RemovePods();
            CniAgentFixture.Cli("policy", "delete", "--all");
            CniAgentFixture.Cli("delete", "-f", pods);
        }
        Assert.Empty(AllEndpoints());
    }

    [Fact]
    public void AKilledAgentLeavesEnforcementInPlaceAndAppliesTheDelQueuedWhileItWasAway()
    {
        var pods = Write("restart.yaml", Pods);
        var running = true;
        try
        {
            Mb("apply", "-f", pods);
            Mb("policy", "import", Write("restart-policy.yaml", Policies));
            Podman("kube", "play", "--network", Network, pods);
            var web = Endpoint("default/web");
            var identity = web.Identity;
            var intruderInterface = Endpoint("default/intruder").Interface;
            fixture.KillAgent();
            running = false;
            Assert.True(Ping("client", web.IPv4!), "allowed while the agent is away");
            Assert.False(Ping("intruder", web.IPv4!), "denied while the agent is away");
            // The runtime removes a pod while the agent is away: the plugin queues the DEL and succeeds.
            Podman("pod", "rm", "--force", "--time", "0", "intruder");
            fixture.StartAgent();
            running = true;
            Assert.Equal(["default/client", "default/web"], AllEndpoints().Select(e => e.Pod).Order(StringComparer.Ordinal).ToList());
            Assert.Equal(identity, Endpoint("default/web").Identity);
            Assert.DoesNotContain(intruderInterface, OwnInterfaces());
            Assert.True(Ping("client", web.IPv4!), "allowed after the restart");
        }
        finally
        {
            if (!running)
            {
                fixture.StartAgent();
            }
            RemovePods();
            CniAgentFixture.Cli("policy", "delete", "--all");
            CniAgentFixture.Cli("delete", "-f", pods);
        }
        Assert.Empty(AllEndpoints());
        Assert.Empty(OwnInterfaces());
    }
}
