using System.Diagnostics;
using Membrane.Cri;
using Membrane.Cri.V1;
using Membrane.Policy.Identity;
using static Membrane.Agent.Tests.Containers.CniAgentFixture;

namespace Membrane.Agent.Tests.Containers;

/// <summary>
/// containerd driven through its CRI as a kubelet drives it (RunPodSandbox, CreateContainer, StartContainer,
/// ExecSync, StopPodSandbox, RemovePodSandbox): no Pod object is applied to the agent, the labels come from the CRI.
/// </summary>
[Collection(CniAgentGroup.Name)]
public sealed class ContainerdTests(CniAgentFixture fixture)
{
    private const string Policy = """
        apiVersion: cilium.io/v2
        kind: CiliumNetworkPolicy
        metadata: {name: web-from-client, namespace: shop}
        spec:
          endpointSelector: {matchLabels: {app: web}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: client}}]
            icmps: [{fields: [{type: EchoRequest, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
          - fromEndpoints: [{matchLabels: {app: client}}]
            toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """;

    private sealed record Pod(string SandboxId, string ContainerId, PodSandboxConfig Config);

    private static async Task<Pod> RunPod(CriClient cri, List<Pod> pods, string name, string app)
    {
        var config = new PodSandboxConfig
        {
            Metadata = new PodSandboxMetadata { Name = name, Namespace = "shop", Uid = Guid.NewGuid().ToString(), Attempt = 0 },
            Hostname = name,
            LogDirectory = Path.Combine(Root, "pod-logs", name),
            Labels = { ["app"] = app },
        };
        Directory.CreateDirectory(config.LogDirectory);
        var sandbox = await cri.Runtime.RunPodSandboxAsync(new RunPodSandboxRequest { Config = config });
        pods.Add(new Pod(sandbox.PodSandboxId, "", config)); // removed at the end even if its container fails
        var container = await cri.Runtime.CreateContainerAsync(new CreateContainerRequest
        {
            PodSandboxId = sandbox.PodSandboxId,
            SandboxConfig = config,
            Config = new ContainerConfig
            {
                Metadata = new ContainerMetadata { Name = "main" },
                Image = new ImageSpec { Image = Image },
                Command = { "nc", "-ll", "-p", "80", "-e", "cat" }, // every pod serves TCP 80 (echo)
                LogPath = "main.log",
            },
        });
        await cri.Runtime.StartContainerAsync(new StartContainerRequest { ContainerId = container.ContainerId });
        pods[^1] = pods[^1] with { ContainerId = container.ContainerId };
        return pods[^1];
    }

    private static async Task<bool> Exec(CriClient cri, Pod pod, params string[] command)
    {
        var request = new ExecSyncRequest { ContainerId = pod.ContainerId, Cmd = { command }, Timeout = 10 };
        var result = await cri.Runtime.ExecSyncAsync(request);
        return result.ExitCode == 0;
    }

    /// <summary>What a kubelet does when pods go (their DELs reach the agent), then the objects and policies.</summary>
    private static async Task RemoveAll(CriClient cri, List<Pod> pods, string objects)
    {
        foreach (var pod in pods)
        {
            await cri.Runtime.StopPodSandboxAsync(new StopPodSandboxRequest { PodSandboxId = pod.SandboxId });
            await cri.Runtime.RemovePodSandboxAsync(new RemovePodSandboxRequest { PodSandboxId = pod.SandboxId });
        }
        CniAgentFixture.Cli("policy", "delete", "--all");
        CniAgentFixture.Cli("delete", "-f", objects);
    }

    /// <summary>Polls (with a deadline) until the endpoint has left the init identity.</summary>
    private static uint IdentifiedWithin(string pod, TimeSpan limit)
    {
        var watch = Stopwatch.StartNew();
        while (true)
        {
            var identity = Endpoint(pod).Identity;
            if (identity != ReservedIdentities.Init || watch.Elapsed > limit)
            {
                return identity;
            }
            Thread.Sleep(50);
        }
    }

    [Fact]
    public async Task LabelsComeFromTheCriAndPolicyIsEnforcedOnContainerdPods()
    {
        using var cri = new CriClient(ContainerdSocket);
        var pods = new List<Pod>();
        try
        {
            Mb("apply", "-f", Write("shop.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"));
            Mb("policy", "import", Write("shop-policy.yaml", Policy));
            await RunPod(cri, pods, "client", "client");
            await RunPod(cri, pods, "web", "web");
            await RunPod(cri, pods, "intruder", "intruder");
            // A hostile record: a label value that would spell app=client in the canonical label form.
            await RunPod(cri, pods, "forger", "x,k8s:app=client");
            foreach (var name in new[] { "client", "web", "intruder" })
            {
                Assert.NotEqual(ReservedIdentities.Init, IdentifiedWithin($"shop/{name}", TimeSpan.FromSeconds(20)));
            }
            Assert.Equal(ReservedIdentities.Init, Endpoint("shop/forger").Identity); // refused, stays in init
            var web = Endpoint("shop/web");
            Assert.Contains("k8s:app=web", web.Labels);
            Assert.True(web.IngressEnforced);
            Assert.True(await Exec(cri, pods[0], "ping", "-c1", "-W1", web.IPv4!), "client → web ping");
            Assert.True(await Exec(cri, pods[0], "ping6", "-c1", "-W1", web.IPv6!), "client → web ping6");
            Assert.False(await Exec(cri, pods[2], "ping", "-c1", "-W1", web.IPv4!), "intruder → web ping");
            Assert.False(await Exec(cri, pods[2], "ping6", "-c1", "-W1", web.IPv6!), "intruder → web ping6");
            Assert.False(await Exec(cri, pods[3], "ping", "-c1", "-W1", web.IPv4!), "forger → web ping");
            Assert.True(await Exec(cri, pods[0], "sh", "-c", $"echo hi | nc -w1 {web.IPv4} 80 | grep -q hi"), "client → web TCP 80");
            Assert.False(await Exec(cri, pods[2], "sh", "-c", $"echo hi | nc -w1 {web.IPv4} 80 | grep -q hi"), "intruder → web TCP 80");
        }
        finally
        {
            await RemoveAll(cri, pods, Write("shop-cleanup.yaml", "apiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"));
        }
        Assert.Empty(AllEndpoints());
        Assert.Empty(OwnInterfaces());
        Assert.Equal("", PodRoutes());
    }

    [Fact]
    public async Task ChainedAfterBridgeOnContainerdWithLabelsFromPodObjects()
    {
        using var cri = new CriClient(fixture.ChainedContainerd());
        var pods = new List<Pod>();
        var objects = Write("shop-objects.yaml", """
            apiVersion: v1
            kind: Namespace
            metadata: {name: shop}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client, namespace: shop, labels: {app: client}}
            spec: {containers: [{name: main}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: web, namespace: shop, labels: {app: web}}
            spec: {containers: [{name: main}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: intruder, namespace: shop, labels: {app: intruder}}
            spec: {containers: [{name: main}]}
            """);
        try
        {
            Mb("apply", "-f", objects);
            Mb("policy", "import", Write("shop-policy.yaml", Policy));
            await RunPod(cri, pods, "client", "client"); // labels from the Pod objects (the agent reads the other CRI)
            await RunPod(cri, pods, "web", "web");
            await RunPod(cri, pods, "intruder", "intruder");
            var web = Endpoint("shop/web");
            Assert.StartsWith("10.211.0.", web.IPv4, StringComparison.Ordinal);
            Assert.Contains("k8s:app=web", web.Labels);
            Assert.DoesNotContain(web.Interface, OwnInterfaces());
            Assert.True(await Exec(cri, pods[0], "ping", "-c1", "-W1", web.IPv4!), "client → web ping, chained on containerd");
            Assert.False(await Exec(cri, pods[2], "ping", "-c1", "-W1", web.IPv4!), "intruder → web ping, chained on containerd");
        }
        finally
        {
            await RemoveAll(cri, pods, objects);
        }
        Assert.Empty(AllEndpoints());
    }
}
