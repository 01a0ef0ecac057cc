using Membrane.Policy.Rules;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Policy.Tests.Resolution;

/// <summary>POLICY-SEMANTICS §3, each rule with a case the obvious wrong implementation fails.</summary>
public sealed class SemanticsTests
{
    private const string ServerFromClientTcp80 = """
        endpointSelector: {matchLabels: {app: server}}
        ingress:
        - fromEndpoints: [{matchLabels: {app: client}}]
          toPorts: [{ports: [{port: "80", protocol: TCP}]}]
        """;

    [Fact]
    public void WithoutPolicyEverythingIsAllowed()
    {
        var c = With("");
        Assert.True(c.Ping("a/client", "a/server"));
        Assert.True(c.Tcp("b/other", "a/server", 9999));
        Assert.True(c.Ping6("a/client", "a/server"));
    }

    [Fact]
    public void L4RuleDropsIcmp_TheOriginalProblem()
    {
        var c = With(Cnp("http", "a", ServerFromClientTcp80));
        Assert.True(c.Tcp("a/client", "a/server", 80));
        Assert.False(c.Tcp("a/client", "a/server", 81));
        Assert.False(c.Udp("a/client", "a/server", 80));
        Assert.False(c.Ping("a/client", "a/server"));
        Assert.False(c.Ping6("a/client", "a/server"));
    }

    [Fact]
    public void IcmpsRuleAllowsPingAgainButNothingElse()
    {
        var c = With(Cnp("http", "a", ServerFromClientTcp80) + Cnp("ping", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress:
            - fromEndpoints: [{matchLabels: {app: client}}]
              icmps: [{fields: [{type: 8, family: IPv4}, {type: EchoRequest, family: IPv6}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server"));
        Assert.True(c.Ping6("a/client", "a/server"));
        Assert.False(c.Ping("a/client", "a/server", type: 13));
        Assert.False(c.Ping6("a/client", "a/server", type: 139));
        Assert.False(c.Tcp("a/client", "a/server", 22));
        Assert.False(c.Ping("b/client", "a/server"));
    }

    [Fact]
    public void IcmpFamilyIsRespected()
    {
        var c = With(Cnp("v4only", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{icmps: [{fields: [{type: 8}]}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server"));
        Assert.False(c.Ping6("a/client", "a/server"));
    }

    [Fact]
    public void TypeZeroMatchesOnlyEchoReply()
    {
        var c = With(Cnp("zero", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{icmps: [{fields: [{type: 0}]}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server", type: 0));
        Assert.False(c.Ping("a/client", "a/server", type: 8));
        Assert.False(c.Ping("a/client", "a/server", type: 3, code: 4));
    }

    [Fact]
    public void CodeRuleMatchesThatCodeOnly_TypeRuleMatchesEveryCode()
    {
        var c = With(Cnp("codes", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{icmps: [{fields: [{type: 3, code: 4}, {type: 11}]}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server", type: 3, code: 4));
        Assert.False(c.Ping("a/client", "a/server", type: 3, code: 1));
        Assert.True(c.Ping("a/client", "a/server", type: 11, code: 0));
        Assert.True(c.Ping("a/client", "a/server", type: 11, code: 1));
    }

    [Fact]
    public void L3OnlyRuleAllowsEveryProtocolIncludingIcmp()
    {
        var c = With(Cnp("l3", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server"));
        Assert.True(c.Ping6("a/client", "a/server", type: 139));
        Assert.True(c.Udp("a/client", "a/server", 5353));
        Assert.True(c.Trace("a/client", "a/server", IpProtocol.Sctp, 9).Allowed);
    }

    [Fact]
    public void IcmpsWithoutPeersAppliesToEveryPeer()
    {
        var c = With(Cnp("anyping", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{icmps: [{fields: [{type: EchoRequest}]}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server"));
        Assert.True(c.Ping("b/other", "a/server"));
        Assert.False(c.Tcp("b/other", "a/server", 80));
    }

    [Fact]
    public void DenyBeatsMoreSpecificAllow()
    {
        var c = With(Cnp("allow", "a", ServerFromClientTcp80) + Cnp("deny", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingressDeny: [{fromEndpoints: [{matchLabels: {app: client}}]}]
            """));
        var trace = c.Trace("a/client", "a/server", IpProtocol.Tcp, 80);
        Assert.False(trace.Allowed);
        Assert.Contains(trace.Ingress.Rules, r => r.Contains("CiliumNetworkPolicy/a/deny", StringComparison.Ordinal));
    }

    [Fact]
    public void WildcardDenyBeatsPeerSpecificAllow()
    {
        var c = With(Cnp("allow", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {app: client}}]}]
            """) + Cnp("deny", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingressDeny: [{icmps: [{fields: [{type: 8}]}]}]
            """));
        Assert.False(c.Ping("a/client", "a/server"));
        Assert.True(c.Ping("a/client", "a/server", type: 13));
        Assert.True(c.Tcp("a/client", "a/server", 80));
    }

    [Fact]
    public void DenyOfOnePortRangeLeavesTheRestOfAnAllowedRange()
    {
        var c = With(Cnp("allow", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{toPorts: [{ports: [{port: "8000", endPort: 8100, protocol: TCP}]}]}]
            ingressDeny: [{toPorts: [{ports: [{port: "8080", protocol: TCP}]}]}]
            """));
        Assert.True(c.Tcp("a/client", "a/server", 8000));
        Assert.True(c.Tcp("a/client", "a/server", 8079));
        Assert.False(c.Tcp("a/client", "a/server", 8080));
        Assert.True(c.Tcp("a/client", "a/server", 8100));
        Assert.False(c.Tcp("a/client", "a/server", 8101));
        Assert.False(c.Tcp("a/client", "a/server", 7999));
    }

    [Fact]
    public void DenyOnlyPolicyEnforcesItsDirection()
    {
        var c = With(Cnp("deny", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingressDeny: [{fromEndpoints: [{matchLabels: {app: other}}]}]
            """));
        Assert.False(c.Ping("a/client", "a/server"));
        Assert.True(c.Ping("a/server", "a/client"));
    }

    [Fact]
    public void DenyOnlyPolicyWithDefaultDenyOffDeniesOnlyWhatItNames()
    {
        var c = With(Cnp("deny", "a", """
            endpointSelector: {matchLabels: {app: server}}
            enableDefaultDeny: {ingress: false}
            ingressDeny: [{icmps: [{fields: [{type: 8}]}]}]
            """));
        Assert.False(c.Ping("a/client", "a/server"));
        Assert.True(c.Tcp("a/client", "a/server", 80));
    }

    [Fact]
    public void EmptyIngressRuleEnforcesAndAllowsNothing()
    {
        var c = With(Cnp("lockdown", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{}]
            """));
        Assert.False(c.Ping("a/client", "a/server"));
        Assert.False(c.Tcp("a/client", "a/server", 80));
        Assert.True(c.Ping("a/server", "a/client"));
    }

    [Fact]
    public void UnenforcedDirectionAllowsEverything()
    {
        var c = With(Cnp("http", "a", ServerFromClientTcp80));
        Assert.True(c.Trace("a/server", "b/other", IpProtocol.Udp, 53).Egress.Allowed);
        Assert.False(c.Trace("a/server", "b/other", IpProtocol.Udp, 53).Egress.Enforced);
    }

    [Fact]
    public void CnpPeerSelectorStaysInItsNamespace()
    {
        var c = With(Cnp("http", "a", ServerFromClientTcp80));
        Assert.True(c.Tcp("a/client", "a/server", 80));
        Assert.False(c.Tcp("b/client", "a/server", 80));
    }

    [Fact]
    public void CnpEndpointSelectorStaysInItsNamespace()
    {
        var c = With(Cnp("lockdown", "b", """
            endpointSelector: {}
            ingress: [{}]
            """));
        Assert.False(c.Ping("a/client", "b/other"));
        Assert.True(c.Ping("b/other", "a/server"));
    }

    [Fact]
    public void CcnpPeerSelectorMatchesEveryNamespace()
    {
        var c = With(Ccnp("http", ServerFromClientTcp80));
        Assert.True(c.Tcp("a/client", "a/server", 80));
        Assert.True(c.Tcp("b/client", "a/server", 80));
        Assert.False(c.Tcp("b/other", "a/server", 80));
    }

    [Fact]
    public void PeerSelectorWithNamespaceLabelCrossesNamespaces()
    {
        var c = With(Cnp("from-dev", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress:
            - fromEndpoints:
              - matchLabels: {io.cilium.k8s.namespace.labels.env: dev, app: client}
            """));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.False(c.Ping("a/client", "a/server"));
        Assert.False(c.Ping("b/other", "a/server"));
    }

    [Fact]
    public void PeerSelectorWithPodNamespaceKeyCrossesNamespaces()
    {
        var c = With(Cnp("from-b", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress:
            - fromEndpoints: [{matchLabels: {k8s:io.kubernetes.pod.namespace: b}}]
            """));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.True(c.Ping("b/other", "a/server"));
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void MatchExpressionsOperatorsWork()
    {
        var c = With(Ccnp("expr", """
            endpointSelector: {matchLabels: {app: server}}
            ingress:
            - fromEndpoints:
              - matchExpressions:
                - {key: app, operator: In, values: [client, other]}
                - {key: io.kubernetes.pod.namespace, operator: NotIn, values: [a]}
                - {key: app, operator: Exists}
                - {key: tier, operator: DoesNotExist}
            """));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.True(c.Ping("b/other", "a/server"));
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void NamedPortResolvesOnTheDestinationPod()
    {
        var c = With(Ccnp("named", """
            endpointSelector: {}
            ingress: [{toPorts: [{ports: [{port: http}]}]}]
            """));
        Assert.True(c.Tcp("a/client", "a/server", 80));
        Assert.False(c.Tcp("a/client", "a/server", 8080));
        Assert.True(c.Tcp("a/client", "b/other", 8080));
        Assert.False(c.Tcp("a/client", "b/other", 80));
        Assert.False(c.Udp("a/client", "a/server", 80));
    }

    [Fact]
    public void EgressNamedPortResolvesOnThePeer()
    {
        var c = With(Cnp("out", "a", """
            endpointSelector: {matchLabels: {app: client}}
            egress: [{toPorts: [{ports: [{port: dns, protocol: UDP}]}]}]
            """));
        Assert.True(c.Udp("a/client", "a/server", 53));
        Assert.False(c.Tcp("a/client", "a/server", 53));
        Assert.False(c.Udp("a/client", "a/server", 54));
    }

    [Fact]
    public void AnyProtocolMeansTcpUdpSctpButNeverIcmp()
    {
        var c = With(Cnp("any", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{toPorts: [{ports: [{port: "0"}]}]}]
            """));
        Assert.True(c.Tcp("a/client", "a/server", 1));
        Assert.True(c.Udp("a/client", "a/server", 65535));
        Assert.True(c.Trace("a/client", "a/server", IpProtocol.Sctp, 7).Allowed);
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void RulesAreOredAndPeersAndPortsAreAnded()
    {
        var c = With(Cnp("two", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress:
            - fromEndpoints: [{matchLabels: {app: client}}]
              toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "443", protocol: TCP}]}]
            - fromEndpoints: [{matchLabels: {app: other}}]
            """));
        Assert.True(c.Tcp("a/client", "a/server", 443));
        Assert.False(c.Tcp("a/client", "a/server", 22));
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void EntitiesSelectReservedIdentities()
    {
        var c = With(Ccnp("world", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEntities: [world]}]
            """));
        var policy = c.Engine.Resolve("a/server");
        Assert.True(policy.State.Lookup(TrafficDirection.Ingress, 2, IpProtocol.Tcp, 80).Allowed);
        Assert.True(policy.State.Lookup(TrafficDirection.Ingress, 9, IpProtocol.Tcp, 80).Allowed);
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void ClusterEntitySelectsPodsNotWorld()
    {
        var c = With(Ccnp("cluster", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEntities: [cluster]}]
            """));
        Assert.True(c.Ping("b/other", "a/server"));
        Assert.False(c.Engine.Resolve("a/server").State.Lookup(TrafficDirection.Ingress, 2, IpProtocol.Icmp, 8 << 8).Allowed);
    }

    [Fact]
    public void AllEntityIsAWildcard()
    {
        var c = With(Cnp("all", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEntities: [all], icmps: [{fields: [{type: 8}]}]}]
            """));
        Assert.True(c.Engine.Resolve("a/server").State.Lookup(TrafficDirection.Ingress, 12345, IpProtocol.Icmp, 8 << 8).Allowed);
    }

    [Fact]
    public void CiliumCidrRuleDoesNotSelectPods()
    {
        var c = With(Cnp("cidr", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromCIDR: [10.200.0.0/16]}]
            """));
        Assert.False(c.Ping("a/client", "a/server"));
        var cidrIdentity = c.Engine.IdentityOf(System.Net.IPAddress.Parse("10.200.99.99"));
        Assert.True(c.Engine.Resolve("a/server").State.Lookup(TrafficDirection.Ingress, cidrIdentity, IpProtocol.Icmp, 8 << 8).Allowed);
    }

    [Fact]
    public void HostCidrOfAPodAddressStillMeansThePod()
    {
        // The ipcache writes pod addresses after CIDR prefixes, so the kernel sees the pod's identity.
        var c = With(Cnp("cidr", "a", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromCIDR: [10.200.0.2/32]}]
            """));
        var client = c.Engine.FindEndpoint("a/client")!;
        Assert.Equal(System.Net.IPAddress.Parse("10.200.0.2"), client.Address(System.Net.Sockets.AddressFamily.InterNetwork));
        Assert.Equal(client.Identity.Id, c.Engine.IdentityOf(System.Net.IPAddress.Parse("10.200.0.2")));
        Assert.Equal(client.Identity.Id, c.Engine.IpCache().Last(e =>
            e.Prefix.BaseAddress.Equals(System.Net.IPAddress.Parse("10.200.0.2"))).Identity);
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void CidrSetExceptIsExcluded()
    {
        var c = With(Cnp("cidr", "a", """
            endpointSelector: {matchLabels: {app: client}}
            egress: [{toCIDRSet: [{cidr: 192.0.2.0/24, except: [192.0.2.128/25]}]}]
            """));
        var state = c.Engine.Resolve("a/client").State;
        Assert.True(state.Lookup(TrafficDirection.Egress, c.Engine.IdentityOf(System.Net.IPAddress.Parse("192.0.2.1")), IpProtocol.Tcp,
            443).Allowed);
        Assert.False(state.Lookup(TrafficDirection.Egress, c.Engine.IdentityOf(System.Net.IPAddress.Parse("192.0.2.200")), IpProtocol.Tcp,
            443).Allowed);
        Assert.False(state.Lookup(TrafficDirection.Egress, c.Engine.IdentityOf(System.Net.IPAddress.Parse("198.51.100.1")), IpProtocol.Tcp,
            443).Allowed);
    }

    [Fact]
    public void FromRequiresNarrowsEveryAllowedPeer()
    {
        var c = With(Ccnp("base", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromEntities: [cluster]}]
            """) + Ccnp("requires", """
            endpointSelector: {matchLabels: {app: server}}
            ingress: [{fromRequires: [{matchLabels: {io.kubernetes.pod.namespace: b}}]}]
            """));
        Assert.True(c.Ping("b/client", "a/server"));
        Assert.False(c.Ping("a/client", "a/server"));
    }

    [Fact]
    public void PodsWithEqualLabelsShareAnIdentity()
    {
        var c = With("", Cluster.Workloads + """

            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client2, namespace: a, labels: {app: client, pod-template-hash: abc}}
            spec: {containers: [{name: c}]}
            """);
        Assert.Equal(c.Engine.FindEndpoint("a/client")!.Identity.Id, c.Engine.FindEndpoint("a/client2")!.Identity.Id);
        Assert.NotEqual(c.Engine.FindEndpoint("a/client")!.Identity.Id, c.Engine.FindEndpoint("b/client")!.Identity.Id);
    }

    [Fact]
    public void PodsCarryDerivedLabels()
    {
        var labels = With("").Engine.FindEndpoint("a/client")!.Labels;
        Assert.Equal("a", labels.ValueOf("io.kubernetes.pod.namespace"));
        Assert.Equal("prod", labels.ValueOf("io.cilium.k8s.namespace.labels.env"));
        Assert.Equal("default", labels.ValueOf("io.cilium.k8s.policy.serviceaccount"));
        Assert.Equal("default", labels.ValueOf("io.cilium.k8s.policy.cluster"));
    }

    [Fact]
    public void SourcePrefixesRestrictOrWidenTheMatch()
    {
        var c = With(Cnp("k8s", "a", """
            endpointSelector: {matchLabels: {k8s:app: server}}
            ingress: [{fromEndpoints: [{matchLabels: {any:app: client}}]}, {fromEndpoints: [{matchLabels: {reserved:app: other}}]}]
            """));
        Assert.True(c.Ping("a/client", "a/server"));
        Assert.False(c.Ping("b/other", "a/server"));
    }
}
