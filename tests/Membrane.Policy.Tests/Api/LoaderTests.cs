using Membrane.Policy.Api;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Tests.Api;

public sealed class LoaderTests
{
    private static string ExamplesDirectory => Path.Combine(AppContext.BaseDirectory, "examples");

    [Fact]
    public void AllExamplesValidate()
    {
        var result = ManifestLoader.LoadPaths([ExamplesDirectory]);
        Assert.True(result.IsValid, string.Join("\n", result.Errors));
        Assert.True(result.Manifests.Policies.Count >= 7);
        Assert.Contains(result.Manifests.Policies, p => p.Rules.Any(r => r.Icmps?.Any(i => i.Family == IcmpFamily.IPv6) == true));
        Assert.Contains(result.Manifests.Policies, p => p.Rules.Any(r => r.Action == RuleAction.Deny && r.Icmps is not null));
    }

    [Fact]
    public void NamedAndNumericTypesLoadPerFamily()
    {
        var set = Cluster.Load(Cluster.Cnp("p", "default", """
            endpointSelector: {}
            egress:
            - icmps:
              - fields:
                - {type: EchoRequest}
                - {type: EchoRequest, family: IPv6}
                - {type: Echo}
                - {type: 0}
                - {type: "11"}
                - {type: DestinationUnreachable, family: IPv4, code: 4}
            """));
        var icmps = set.Policies[0].Rules.Single().Icmps!;
        Assert.Equal(
            [new(IcmpFamily.IPv4, 8, null), new(IcmpFamily.IPv6, 128, null), new(IcmpFamily.IPv4, 8, null), new(IcmpFamily.IPv4, 0, null),
             new(IcmpFamily.IPv4, 11, null), new IcmpMatch(IcmpFamily.IPv4, 3, 4)],
            icmps);
    }

    [Fact]
    public void FortyFieldsAreAccepted()
    {
        var fields = string.Join("\n", Enumerable.Range(0, 40).Select(i => $"    - {{type: {i}}}"));
        var set = Cluster.Load(Cluster.Cnp("p", "default", $"endpointSelector: {{}}\ningress:\n- icmps:\n  - fields:\n{fields}"));
        Assert.Equal(40, set.Policies[0].Rules.Single().Icmps!.Count);
    }

    [Fact]
    public void ListSpecsAndMultipleDocumentsLoad()
    {
        var set = Cluster.Load("""
            apiVersion: v1
            kind: List
            items:
            - apiVersion: cilium.io/v2
              kind: CiliumNetworkPolicy
              metadata: {name: one}
              spec: {endpointSelector: {}, ingress: [{fromEntities: [world]}]}
              specs:
              - endpointSelector: {matchLabels: {app: x}}
                egress: [{toEntities: [cluster]}]
            ---
            {"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy", "metadata": {"name": "two", "namespace": "x"},
             "spec": {"podSelector": {}}}
            ---
            """);
        Assert.Equal(2, set.Policies.Count);
        Assert.Equal(2, set.Policies[0].Specs.Count);
        Assert.Equal("default", set.Policies[0].Origin.Namespace);
        Assert.Equal("NetworkPolicy/x/two", set.Policies[1].Origin.ToString());
    }

    [Fact]
    public void EveryErrorIsReportedNotJustTheFirst()
    {
        var result = ManifestLoader.LoadText(Cluster.Cnp("p", "default", """
            endpointSelector: {}
            ingress:
            - icmps: [{fields: [{type: 999}, {type: Nope}, {type: 8, family: IPv7}]}]
              fromEntities: [nowhere]
            """), "x.yaml");
        Assert.Equal(4, result.Errors.Count);
    }

    [Fact]
    public void PodPortsAndAddressesLoad()
    {
        var set = Cluster.Load("""
            apiVersion: v1
            kind: Pod
            metadata: {name: p, labels: {app: x}}
            spec:
              serviceAccountName: robot
              containers:
              - name: a
                image: nginx
                ports: [{name: http, containerPort: 80}, {containerPort: 53, protocol: UDP}]
            status:
              podIPs: [{ip: 10.9.0.5}, {ip: "fd00::5"}]
            """);
        var pod = set.Pods.Single();
        Assert.Equal("default/p", pod.Key);
        Assert.Equal("robot", pod.ServiceAccount);
        Assert.Equal(2, pod.Ports.Count);
        Assert.Equal(2, pod.Addresses.Count);
    }
}
