using System.Net;
using Membrane.Policy.Identity;
using Membrane.Policy.Workloads;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Policy.Tests.Resolution;

/// <summary>A container whose labels are not known yet has the reserved init identity until they arrive.</summary>
public sealed class InitIdentityTests
{
    private static PodManifest Pending(string ns, string name, string v4) =>
        new(ns, name, new Dictionary<string, string> { ["app"] = "server" }, "default", [], [IPAddress.Parse(v4)], "cni")
        {
            LabelsPending = true,
        };

    [Fact]
    public void APodWithPendingLabelsHasTheInitIdentityAndIsReidentifiedWhenTheyArrive()
    {
        var c = With(Cnp("from-init", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEntities: [init], icmps: [{fields: [{type: 8}]}]}]
            """));
        var pending = c.Engine.UpsertPod(Pending("b", "new", "10.200.9.9"));
        Assert.Equal(ReservedIdentities.Init, pending.Identity.Id);
        Assert.Equal(ReservedIdentities.Init, c.Engine.IdentityOf(IPAddress.Parse("10.200.9.9")));
        // The init entity names it; no label selector does (it has no namespace and no app label yet).
        Assert.True(c.Ping("b/new", "a/server"));
        Assert.False(c.Ping("b/client", "a/server"));
        var identities = c.Engine.Identities.Count();

        var known = c.Engine.UpsertPod(Pending("b", "new", "10.200.9.9") with { LabelsPending = false });
        Assert.True(known.Identity.Id >= ReservedIdentities.FirstPodIdentity);
        Assert.Equal(known.Identity.Id, c.Engine.IdentityOf(IPAddress.Parse("10.200.9.9")));
        Assert.False(c.Ping("b/new", "a/server"));
        // Leaving init allocated a pod identity; init itself is never created or freed.
        Assert.Equal(identities + 1, c.Engine.Identities.Count());
        Assert.NotNull(c.Engine.IdentityAllocator.Get(ReservedIdentities.Init));
    }

    [Fact]
    public void TwoPendingPodsShareInitAndRemovingThemKeepsIt()
    {
        var c = With("");
        var before = c.Engine.Identities.Select(i => i.Id).ToList();
        c.Engine.UpsertPod(Pending("a", "x", "10.200.9.10"));
        c.Engine.UpsertPod(Pending("b", "y", "10.200.9.11"));
        Assert.Equal(before, c.Engine.Identities.Select(i => i.Id).ToList());
        c.Engine.RemovePod("a/x");
        c.Engine.RemovePod("b/y");
        Assert.Equal(before, c.Engine.Identities.Select(i => i.Id).ToList());
        Assert.Equal(ReservedIdentities.WorldIPv4, c.Engine.IdentityOf(IPAddress.Parse("10.200.9.10")));
    }

    [Fact]
    public void APolicyCanSelectEndpointsWaitingForLabels()
    {
        var c = With(Ccnp("init-egress-dns-only", """
            endpointSelector: {matchLabels: {"reserved:init": ""}}
            egress: [{toEntities: [host]}]
            """));
        c.Engine.UpsertPod(Pending("b", "new", "10.200.9.12"));
        Assert.False(c.Ping("b/new", "a/server"));
        Assert.True(c.Ping("b/client", "a/server"));
    }

    [Fact]
    public void LabelsFromARuntimeThatCouldSpellAnotherLabelSetAreRefused()
    {
        Assert.Null(PodLabels.Check(new Dictionary<string, string> { ["app"] = "web", ["example.com/tier"] = "front-1" }));
        Assert.NotNull(PodLabels.Check(new Dictionary<string, string> { ["app"] = "web,k8s:role=admin" }));
        Assert.NotNull(PodLabels.Check(new Dictionary<string, string> { ["app=web,k8s:role"] = "admin" }));
        Assert.NotNull(PodLabels.Check(new Dictionary<string, string> { ["app"] = new string('x', 64) }));
    }
}
