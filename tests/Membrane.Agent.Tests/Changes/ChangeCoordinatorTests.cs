using System.Net;
using Membrane.Agent.Changes;
using Membrane.Agent.Cluster;
using Membrane.Agent.Cni;
using Membrane.Agent.Objects;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Kvstore;
using Microsoft.Extensions.Logging.Abstractions;

namespace Membrane.Agent.Tests.Changes;

/// <summary>
/// The one change path in process, with the kernel faked and the state file and object store real: a failure at each
/// step of a change from each source leaves memory, kernel, state file and store exactly as they were. Each case also
/// runs without the failure, which must change all of them (so no case passes by changing nothing).
/// </summary>
public sealed class ChangeCoordinatorTests : IDisposable
{
    private readonly string _directory = Directory.CreateTempSubdirectory("membrane-change-").FullName;

    public void Dispose() => Directory.Delete(_directory, recursive: true);

    public static TheoryData<string, FailAt> Cases() => new()
    {
        { "api", FailAt.Nothing }, { "api", FailAt.Plan }, { "api", FailAt.Commit }, { "api", FailAt.Persist }, { "api", FailAt.Enforce },
        { "store", FailAt.Nothing }, { "store", FailAt.Plan }, { "store", FailAt.Persist }, { "store", FailAt.Enforce },
        { "remote-endpoints", FailAt.Nothing }, { "remote-endpoints", FailAt.Plan }, { "remote-endpoints", FailAt.Enforce },
        { "remote-nodes", FailAt.Nothing }, { "remote-nodes", FailAt.Plan }, { "remote-nodes", FailAt.Enforce },
        { "cni", FailAt.Nothing }, { "cni", FailAt.Plan }, { "cni", FailAt.Commit }, { "cni", FailAt.Persist }, { "cni", FailAt.Enforce },
    };

    [Theory]
    [MemberData(nameof(Cases))]
    public async Task AFailedStepLeavesEverythingAsItWas(string source, FailAt step)
    {
        using var node = await Node.StartAsync(_directory, source == "api" ? "sandbox" : source == "cni" ? "cni" : "cluster");
        var before = node.Everything();
        var kernelBefore = node.Kernel.Kernel();
        node.Fail(step);
        var change = source switch
        {
            "api" => node.Objects.ApplyAsync(new ManifestRequest(Pod("extra", "server", null) + "---\n" + Policy("extra-echo", "extra"),
                "change.yaml")),
            "store" => node.Cluster!.ApplyStoreStateAsync(new Dictionary<string, string>(node.Store.Objects, StringComparer.Ordinal)
            {
                ["Pod/default/extra"] = Pod("extra", "server", "node-1"),
                ["CiliumNetworkPolicy/default/extra-echo"] = Policy("extra-echo", "extra"),
            }, node.Store.Revision + 1),
            "remote-endpoints" => node.Cluster!.ApplyRemoteEndpointsAsync(new Dictionary<IPAddress, RemoteEndpoint>
            {
                [IPAddress.Parse("10.200.1.7")] = new(IPAddress.Parse("10.200.1.7"), 300, "node-2", IPAddress.Parse("10.0.0.2"),
                    "default/far"),
            }),
            "remote-nodes" => node.Cluster!.ApplyRemoteNodesAsync(["node-1", "node-2", "node-3"],
                [IPAddress.Parse("10.0.0.2"), IPAddress.Parse("10.0.0.3")]),
            _ => node.Cni!.DelAsync(new CniAttachmentRequest("container-2", "eth0", null, "default", null, null)),
        };
        if (step == FailAt.Nothing)
        {
            await change;
            Assert.NotEqual(before, node.Everything());
            Assert.NotEqual(kernelBefore, node.Kernel.Kernel());
            return;
        }
        await Assert.ThrowsAnyAsync<Exception>(() => change);
        Assert.Equal(before, node.Everything());
    }

    [Fact]
    public async Task BadInputFromEachSourceChangesNothing()
    {
        using var sandbox = await Node.StartAsync(Path.Combine(_directory, "s"), "sandbox");
        var before = sandbox.Everything();
        var error = await Assert.ThrowsAsync<AgentInputException>(() => sandbox.Objects.ApplyAsync(new ManifestRequest(
            Pod("lost", "server", null).Replace("namespace: default", "namespace: nowhere", StringComparison.Ordinal), "bad.yaml")));
        Assert.Contains("namespace \"nowhere\" does not exist", error.Message, StringComparison.Ordinal);
        Assert.Equal(before, sandbox.Everything());

        using var cluster = await Node.StartAsync(Path.Combine(_directory, "c"), "cluster");
        before = cluster.Everything();
        // A store state whose object does not load (the store is not trusted to hold only good objects).
        await Assert.ThrowsAnyAsync<Exception>(() => cluster.Cluster!.ApplyStoreStateAsync(
            new Dictionary<string, string>(cluster.Store.Objects, StringComparer.Ordinal)
            {
                ["CiliumNetworkPolicy/default/broken"] =
                    "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: broken}\nspec: [",
            }, cluster.Store.Revision + 1));
        Assert.Equal(before, cluster.Everything());

        using var cni = await Node.StartAsync(Path.Combine(_directory, "n"), "cni");
        before = cni.Everything();
        await Assert.ThrowsAsync<AgentInputException>(() => cni.Cni!.DelAsync(new CniAttachmentRequest("bad id!", "eth0", null, "default",
            null, null)));
        Assert.Equal(before, cni.Everything());
    }

    [Fact]
    public async Task ARefusedChangeIsFollowedByAGoodOne()
    {
        using var node = await Node.StartAsync(_directory, "sandbox");
        var kernel = node.Kernel.Kernel();
        var request = new ManifestRequest(Policy("client-echo", "client"), "a.yaml");
        node.Fail(FailAt.Enforce);
        await Assert.ThrowsAnyAsync<Exception>(() => node.Objects.ApplyAsync(request));
        Assert.Equal(kernel, node.Kernel.Kernel());
        var response = await node.Objects.ApplyAsync(request);
        Assert.Equal(node.Store.Revision, response.Revision);
        Assert.NotEqual(kernel, node.Kernel.Kernel());
        Assert.Contains("CiliumNetworkPolicy/default/client-echo", node.Disk.Content(), StringComparison.Ordinal);
    }

    internal static string Pod(string name, string app, string? nodeName) =>
        $"apiVersion: v1\nkind: Pod\nmetadata: {{name: {name}, namespace: default, labels: {{app: {app}}}}}\n" +
        (nodeName is null ? "spec: {}\n" : $"spec: {{nodeName: {nodeName}}}\n");

    internal static string Policy(string name, string app) =>
        $"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: default}}\nspec:\n" +
        $"  endpointSelector: {{matchLabels: {{app: {app}}}}}\n" +
        "  ingress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: [{type: 8}]}]}]\n";

    /// <summary>One node's change path without a kernel: the real units over a fake enforcer.</summary>
    private sealed class Node : IDisposable
    {
        private Node(string directory, string kind)
        {
            Directory.CreateDirectory(directory);
            var options = new AgentOptions
            {
                StateDirectory = directory,
                Node = kind == "cluster" ? "node-1" : null,
                Etcd = kind == "cluster" ? "http://127.0.0.1:1" : null,
            };
            Disk = new FailingStateFile(new StateStore(directory));
            Attachments = kind == "cni" ? new CniAttachments() : null;
            IPodSource pods = Attachments is { } attachments ? new AttachedPods(attachments)
                : kind == "cluster" ? new ClusterPods(options, "node-1") : new SandboxPods(options);
            State = new DesiredState(options, Store, pods, Attachments);
            Coordinator = new ChangeCoordinator(State, Kernel, Disk, options.Node, NullLogger.Instance);
            Objects = new ObjectChanges(Coordinator, null);
            if (kind == "cluster")
            {
                Cluster = new ClusterSync(Coordinator, null, "node-1");
                Coordinator.Observe(Cluster);
            }
            if (pods is AttachedPods attached)
            {
                Cni = new CniRequests(Coordinator, attached, options, null!, _ => true, NullLogger.Instance);
            }
        }

        public FakeEnforcer Kernel { get; } = new();

        public FailingStateFile Disk { get; }

        public FailingObjectStore Store { get; } = new();

        public DesiredState State { get; }

        public CniAttachments? Attachments { get; }

        public ChangeCoordinator Coordinator { get; }

        public ObjectChanges Objects { get; }

        public ClusterSync? Cluster { get; }

        public CniRequests? Cni { get; }

        /// <summary>A node with two pods (one on another node in a cluster) and a policy, enforced and persisted.</summary>
        public static async Task<Node> StartAsync(string directory, string kind)
        {
            var node = new Node(directory, kind);
            if (kind == "cni")
            {
                node.Attachments!.Restore([
                    new CniAttachment("container-1", "eth0", "/run/netns/c1", "default", "client", false, ["10.200.0.10", "fd00:200::10"]),
                    new CniAttachment("container-2", "eth0", "/run/netns/c2", "default", "server", false, ["10.200.0.11", "fd00:200::11"]),
                ]);
                node.State.Rebuild([], new Dictionary<string, IReadOnlyList<IPAddress>>());
            }
            await node.Coordinator.StartAsync();
            if (node.Cluster is { } cluster)
            {
                await cluster.ApplyRemoteNodesAsync(["node-1", "node-2"], [IPAddress.Parse("10.0.0.2")]);
            }
            var far = kind == "cluster" ? "node-2" : null;
            var objects = string.Join("---\n", Pod("client", "client", kind == "cluster" ? "node-1" : null), Pod("server", "server", far),
                Pod("far", "far", far), Policy("server-echo", "server"));
            await node.Objects.ApplyAsync(new ManifestRequest(objects, "start.yaml"));
            return node;
        }

        public void Fail(FailAt step)
        {
            switch (step)
            {
                case FailAt.Commit:
                    Store.FailNext = true;
                    break;
                case FailAt.Persist:
                    Disk.FailNext = true;
                    break;
                default:
                    Kernel.Fail = step;
                    break;
            }
        }

        /// <summary>Memory, kernel, state file and store, as text.</summary>
        public string Everything()
        {
            var engine = State.Engine;
            return string.Join("\n---\n",
                $"revision {Store.Revision}",
                string.Join("\n", Store.Objects.OrderBy(o => o.Key, StringComparer.Ordinal).Select(o => $"{o.Key}: {o.Value}")),
                string.Join("\n", engine.Identities.Select(i => $"{i.Id} {i.Kind} {i.Labels.Canonical}").Order(StringComparer.Ordinal)),
                string.Join("\n", engine.Endpoints.Select(e => $"{e.Key} {e.Identity.Id} {string.Join(",", e.Addresses)} "
                    + State.IsLocal(e.Pod)).Order(StringComparer.Ordinal)),
                string.Join("\n", engine.Policies.Select(p => p.Origin.ToString()).Order(StringComparer.Ordinal)),
                string.Join("\n", (Attachments?.All ?? []).Select(a => $"{a.ContainerId} {a.PodKey}").Order(StringComparer.Ordinal)),
                string.Join("\n", State.RemoteAddresses.Select(r => $"{r.Key} {string.Join(",", r.Value)}").Order(StringComparer.Ordinal)),
                string.Join(" ", State.RemoteNodes), string.Join(" ", State.ReadyNodes.Order(StringComparer.Ordinal)),
                Cluster?.Enforcement?.ToString() ?? "",
                Kernel.Kernel(),
                WithoutInterfaces(Disk.Content()));
        }

        /// <summary>The state file without interface names and indexes (see <see cref="FakeEnforcer.Kernel"/>).</summary>
        private static string WithoutInterfaces(string json) =>
            System.Text.RegularExpressions.Regex.Replace(json, "\"(hostInterface|ifIndex)\": (\"lxc\\d+\"|\\d+)", "\"$1\": _");

        public void Dispose() => Coordinator.Dispose();
    }
}
