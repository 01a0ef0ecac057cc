using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Policy.Tests.Resolution;

/// <summary>Reads never write: resolving one endpoint and tracing (by pods or by raw labels) leave the engine as it was.</summary>
public sealed class PurityTests
{
    private const string Policy = """
        endpointSelector: {matchLabels: {app: server}}
        ingress: [{fromEndpoints: [{matchLabels: {role: trusted}}], icmps: [{fields: [{type: 8}]}]}]
        """;

    private static string Fingerprint(PolicyEngine engine) =>
        $"{engine.Revision}|{string.Join(",", engine.Identities.Select(i => $"{i.Id}={i.Labels.Canonical}"))}|"
        + string.Join(",", engine.Endpoints.Select(e => $"{e.Key}:{e.Identity.Id}:{string.Join("/", e.Addresses)}")
            .Order(StringComparer.Ordinal))
        + $"|{string.Join(",", engine.Dirty.Order(StringComparer.Ordinal))}|"
        + string.Join(",", engine.IpCache().Select(e => $"{e.Prefix}={e.Identity}"));

    [Fact]
    public void ResolvingADirtyEndpointLeavesItDirty()
    {
        var c = With(Cnp("p", "a", Policy));
        c.Engine.ResolveDirty();
        c.Engine.UpsertPolicy(Load(Cnp("q", "a", "endpointSelector: {matchLabels: {app: server}}\negress: [{}]")).Policies[0]);
        var before = Fingerprint(c.Engine);
        Assert.Contains("a/server", c.Engine.Dirty);
        Assert.True(c.Engine.Resolve("a/server").Enforced.Contains(TrafficDirection.Egress));
        Assert.Equal(before, Fingerprint(c.Engine));
        Assert.Equal(["a/server"], c.Engine.ResolveDirty().Select(p => p.Endpoint.Key).ToList());
        Assert.Empty(c.Engine.Dirty);
    }

    [Fact]
    public void TracingByLabelsLeavesTheEngineUntouched()
    {
        var c = With(Cnp("p", "a", Policy));
        c.Engine.ResolveDirty();
        var before = Fingerprint(c.Engine);
        var trusted = "k8s:role=trusted,k8s:io.kubernetes.pod.namespace=a";
        Assert.True(c.Ping(trusted, "a/server"));
        Assert.False(c.Ping("k8s:role=other,k8s:io.kubernetes.pod.namespace=b", "a/server"));
        Assert.True(c.Ping("a/server", "k8s:app=new,k8s:io.kubernetes.pod.namespace=b"));
        Assert.Equal(before, Fingerprint(c.Engine));
        // The next real pod gets the identity it would have had without the traces.
        var fresh = With(Cnp("p", "a", Policy));
        fresh.Engine.ResolveDirty();
        var pod = Load("apiVersion: v1\nkind: Pod\nmetadata: {name: n, namespace: a, labels: {role: trusted}}\nspec: {containers: " +
            "[{name: c}]}\n").Pods[0];
        Assert.Equal(fresh.Engine.UpsertPod(pod).Identity.Id, c.Engine.UpsertPod(pod).Identity.Id);
    }
}
