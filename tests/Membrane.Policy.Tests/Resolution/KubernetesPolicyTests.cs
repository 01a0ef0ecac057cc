using Membrane.Policy.Rules;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Policy.Tests.Resolution;

/// <summary>networking.k8s.io/v1 NetworkPolicy semantics, as the Kubernetes conformance suite expects them.</summary>
public sealed class KubernetesPolicyTests
{
    private const string Addressed = """
        apiVersion: v1
        kind: Pod
        metadata: {name: server, namespace: a, labels: {app: server}}
        spec: {containers: [{name: s, ports: [{name: http, containerPort: 80}]}]}
        status: {podIPs: [{ip: 10.0.1.10}, {ip: "fd00::110"}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: near, namespace: b, labels: {app: c}}
        spec: {containers: [{name: c}]}
        status: {podIP: 10.0.2.20}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: far, namespace: b, labels: {app: d}}
        spec: {containers: [{name: c}]}
        status: {podIP: 10.0.3.30}
        """;

    [Fact]
    public void DefaultPolicyTypeIsIngressOnly()
    {
        var c = With(Knp("deny-all", "a", "podSelector: {}"));
        Assert.False(c.Ping("b/client", "a/server"));
        Assert.True(c.Ping("a/server", "b/client"));
    }

    [Fact]
    public void EgressRulesAddEgressToDefaultTypes()
    {
        var c = With(Knp("egress", "a", """
            podSelector: {matchLabels: {app: client}}
            egress: [{to: [{podSelector: {matchLabels: {app: server}}}]}]
            """));
        Assert.True(c.Tcp("a/client", "a/server", 80));
        Assert.False(c.Tcp("a/client", "b/other", 8080));
        Assert.False(c.Tcp("b/client", "a/client", 1));
    }

    [Fact]
    public void PolicyTypesEgressOnlyLeavesIngressOpen()
    {
        var c = With(Knp("egress", "a", """
            podSelector: {}
            policyTypes: [Egress]
            """));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.False(c.Ping("a/server", "b/client"));
    }

    [Fact]
    public void EmptyRuleAllowsEverything()
    {
        var c = With(Knp("allow-all", "a", """
            podSelector: {}
            ingress: [{}]
            """));
        Assert.True(c.Ping("b/other", "a/server"));
        Assert.True(c.Engine.Resolve("a/server").State.Lookup(TrafficDirection.Ingress, 2, IpProtocol.Udp, 9).Allowed);
    }

    [Fact]
    public void RuleWithoutPortsAllowsIcmp_WithPortsDoesNot()
    {
        var c = With(Knp("no-ports", "a", """
            podSelector: {matchLabels: {app: server}}
            ingress: [{from: [{podSelector: {matchLabels: {app: client}}}]}]
            """) + Knp("ports", "b", """
            podSelector: {}
            ingress: [{ports: [{port: 8080}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server"));
        Assert.False(c.Ping("a/client", "b/other"));
        Assert.True(c.Tcp("a/client", "b/other", 8080));
        Assert.False(c.Udp("a/client", "b/other", 8080));
    }

    [Fact]
    public void PortsDefaultToTcpAndNamedPortsResolve()
    {
        var c = With(Knp("named", "a", """
            podSelector: {matchLabels: {app: server}}
            ingress: [{ports: [{port: http}, {port: 53, protocol: UDP}, {port: 9000, endPort: 9002}]}]
            """));
        Assert.True(c.Tcp("b/other", "a/server", 80));
        Assert.True(c.Udp("b/other", "a/server", 53));
        Assert.True(c.Tcp("b/other", "a/server", 9002));
        Assert.False(c.Tcp("b/other", "a/server", 9003));
        Assert.False(c.Udp("b/other", "a/server", 80));
    }

    [Fact]
    public void NamespaceSelectorSelectsPodsOfMatchingNamespaces()
    {
        var c = With(Knp("from-dev", "a", """
            podSelector: {matchLabels: {app: server}}
            ingress: [{from: [{namespaceSelector: {matchLabels: {env: dev}}}]}]
            """));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.True(c.Ping("b/other", "a/server"));
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void NamespaceAndPodSelectorInOnePeerAreAnded()
    {
        var c = With(Knp("and", "a", """
            podSelector: {matchLabels: {app: server}}
            ingress:
            - from: [{namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: b}}, podSelector: {matchLabels: {app: client}}}]
            """));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.False(c.Ping("b/other", "a/server"));
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void IpBlockMatchesPodAddressesWithExcept()
    {
        var c = With(Knp("ipblock", "a", """
            podSelector: {matchLabels: {app: server}}
            ingress: [{from: [{ipBlock: {cidr: 10.0.0.0/16, except: [10.0.3.0/24]}}]}]
            """), Addressed);
        Assert.True(c.Ping("b/near", "a/server"));
        Assert.False(c.Ping("b/far", "a/server"));
    }

    [Fact]
    public void IpBlockForgetsAPodThatMovesOutOfTheBlock()
    {
        var c = With(Knp("ipblock", "a", """
            podSelector: {matchLabels: {app: server}}
            ingress: [{from: [{ipBlock: {cidr: 10.0.2.0/24}}]}]
            """), Addressed);
        Assert.True(c.Ping("b/near", "a/server"));
        var near = c.Engine.FindEndpoint("b/near")!.Pod;
        c.Engine.UpsertPod(near with { Addresses = [System.Net.IPAddress.Parse("10.0.9.9")] });
        Assert.False(c.Ping("b/near", "a/server"));
    }
}
