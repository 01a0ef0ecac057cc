using Membrane.Policy.Labels;
using Membrane.Policy.Rules;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Policy.Tests.Resolution;

public sealed class IncrementalTests
{
    [Fact]
    public void AddingAPolicyReResolvesOnlyTheEndpointsItSelects()
    {
        var c = With("");
        c.Engine.ResolveAll();
        var before = c.Engine.ResolutionCount;
        c.Engine.UpsertPolicy(Load(Cnp("p", "a", "endpointSelector: {matchLabels: {app: server}}\ningress: [{}]")).Policies[0]);
        Assert.Equal(["a/server"], c.Engine.Dirty.ToList());
        c.Engine.ResolveDirty();
        Assert.Equal(before + 1, c.Engine.ResolutionCount);
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void RemovingAPolicyRestoresAccess()
    {
        var c = With(Cnp("p", "a", "endpointSelector: {matchLabels: {app: server}}\ningress: [{}]"));
        Assert.False(c.Ping("a/client", "a/server"));
        Assert.True(c.Engine.RemovePolicy("CiliumNetworkPolicy/a/p"));
        Assert.True(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void PodLabelChangeReIdentifiesAndUpdatesPeers()
    {
        var c = With(Cnp("p", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {role: trusted}}]}]
            """));
        c.Engine.ResolveAll();
        Assert.False(c.Ping("a/client", "a/server"));
        var client = c.Engine.FindEndpoint("a/client")!;
        var oldIdentity = client.Identity.Id;
        c.Engine.UpsertPod(client.Pod with { Labels = new Dictionary<string, string> { ["app"] = "client", ["role"] = "trusted" } });
        Assert.Contains("a/server", c.Engine.Dirty);
        Assert.DoesNotContain("b/other", c.Engine.Dirty);
        Assert.NotEqual(oldIdentity, c.Engine.FindEndpoint("a/client")!.Identity.Id);
        Assert.True(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void NamespaceLabelChangeReIdentifiesItsPods()
    {
        var c = With(Ccnp("p", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {io.cilium.k8s.namespace.labels.trusted: "yes"}}]}]
            """));
        Assert.False(c.Ping("b/client", "a/server"));
        c.Engine.UpsertNamespace(new("b", new Dictionary<string, string> { ["trusted"] = "yes" }, "x"));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.Equal("yes", c.Engine.FindEndpoint("b/other")!.Labels.ValueOf(WellKnownLabels.NamespaceLabelPrefix + "trusted"));
    }

    [Fact]
    public void RestoredIdentityNumbersAreKeptAndSelectable()
    {
        var original = With("");
        var serverLabels = original.Engine.FindEndpoint("a/server")!.Labels;
        var restarted = new Membrane.Policy.Resolution.PolicyEngine();
        restarted.IdentityAllocator.Restore(4242, serverLabels, Membrane.Policy.Identity.IdentityKind.Pod);
        restarted.Apply(Load(Cluster.Workloads));
        restarted.UpsertPolicy(Load(Cnp("p", "a", "endpointSelector: {matchLabels: {app: server}}\ningress: [{}]")).Policies[0]);
        Assert.Equal(4242u, restarted.FindEndpoint("a/server")!.Identity.Id);
        Assert.Contains(restarted.Resolve("a/server").SelectingSpecs, s => s.Origin.Name == "p");
        Assert.Contains(Membrane.Policy.Rules.TrafficDirection.Ingress, restarted.Resolve("a/server").Enforced);
    }

    [Fact]
    public void TraceByLabelsMatchesTheSamePodAndLeavesNoTrace()
    {
        var c = With(Cnp("p", "a",
            "endpointSelector: {matchLabels: {app: server}}\ningress: [{fromEndpoints: [{matchLabels: {app: client}}], icmps: [{fields: " +
            "[{type: 8}]}]}]"));
        var pods = c.Engine.Endpoints.Count();
        var identities = c.Engine.Identities.Count();
        var byPod = c.Trace("a/client", "a/server", Membrane.Policy.Rules.IpProtocol.Icmp, type: 8);
        var byLabels = c.Trace("app=client,io.kubernetes.pod.namespace=a", "a/server", Membrane.Policy.Rules.IpProtocol.Icmp, type: 8);
        var otherNamespace = c.Trace("app=client,io.kubernetes.pod.namespace=b", "a/server", Membrane.Policy.Rules.IpProtocol.Icmp,
            type: 8);
        Assert.True(byPod.Allowed);
        Assert.True(byLabels.Allowed);
        Assert.Equal(byPod.SourceIdentity, byLabels.SourceIdentity);
        Assert.False(otherNamespace.Allowed);
        Assert.Equal(pods, c.Engine.Endpoints.Count());
        Assert.Equal(identities, c.Engine.Identities.Count());
    }

    [Fact]
    public void RemovedPodsFreeTheirIdentity()
    {
        var c = With("");
        var count = c.Engine.Identities.Count();
        c.Engine.RemovePod("a/server");
        Assert.Equal(count - 1, c.Engine.Identities.Count());
    }

    [Fact]
    public void IncrementalResultEqualsFullRecomputation()
    {
        var policies = Cnp("p1", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """) + Ccnp("p2", """
            endpointSelector: {}
            egressDeny: [{toEndpoints: [{matchLabels: {app: other}}], icmps: [{fields: [{type: 8}]}]}]
            """);
        var incremental = With("");
        incremental.Engine.ResolveAll();
        foreach (var p in Load(policies).Policies)
        {
            incremental.Engine.UpsertPolicy(p);
            incremental.Engine.ResolveDirty();
        }
        var full = With(policies);
        foreach (var e in full.Engine.ResolveAll())
        {
            var other = incremental.Engine.Resolve(e.Endpoint.Key).State.Entries;
            Assert.Equal(e.State.Entries.Keys.Select(k => k.ToString()).Order().ToList(), other.Keys.Select(k => k.ToString()).Order()
                .ToList());
        }
    }
}

/// <summary>Bulk CIDR policies cost work in proportion to their size, not to its square.</summary>
public sealed class BulkCidrTests
{
    [Fact]
    public void TwentyThousandCidrsNeedNoQuadraticSelectorWork()
    {
        var cidrs = string.Join(", ", Enumerable.Range(0, 20_000).Select(i => $"\"100.{64 + i / 65536}.{i / 256 % 256}.{i % 256}/32\""));
        var broad = "\"100.64.0.0/20\"";
        var cluster = Cluster.With(Cluster.Cnp("bulk", "a", $"endpointSelector: {{}}\negress:\n- toCIDR: [{cidrs}]\n- toCIDR: [{broad}]"));
        var engine = cluster.Engine;
        var before = engine.SelectorEvaluations;
        var state = engine.Resolve("a/client").State;
        // 20,000 /32 identities plus the /20's own: 20,001 CIDR identities, each selected by its own selector and
        // the first 4,096 also by the /20. The quadratic cache made 400 million tests here.
        Assert.InRange(engine.SelectorEvaluations, 20_000, 2_000_000);
        Assert.Equal(20_001, engine.Identities.Count(i => i.Kind == Membrane.Policy.Identity.IdentityKind.Cidr));
        Assert.True(engine.SelectorEvaluations - before < 1_000);
        Assert.True(state.Lookup(Membrane.Policy.Rules.TrafficDirection.Egress,
            engine.IdentityOf(System.Net.IPAddress.Parse("100.64.78.31")), 6, 80).Allowed);
        Assert.False(state.Lookup(Membrane.Policy.Rules.TrafficDirection.Egress,
            engine.IdentityOf(System.Net.IPAddress.Parse("100.65.250.1")), 6, 80).Allowed);
        Assert.True(state.Lookup(Membrane.Policy.Rules.TrafficDirection.Egress,
            engine.IdentityOf(System.Net.IPAddress.Parse("100.64.15.255")), 6, 80).Allowed);
    }
}
