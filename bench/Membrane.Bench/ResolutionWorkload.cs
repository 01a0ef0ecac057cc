using System.Globalization;
using System.Text;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Bench;

/// <summary>
/// A synthetic cluster: 10,000 pods in 100 namespaces (20 apps each, so about 2,000 identities) and 1,000 policies
/// mixing L3, L4, ICMP and deny rules, cluster-wide and namespaced.
/// </summary>
internal static class ResolutionWorkload
{
    public const int Namespaces = 100;
    public const int PodsPerNamespace = 100;
    public const int AppsPerNamespace = 20;
    public const int Policies = 1000;

    public static ManifestSet Build(int seed = 7)
    {
        var random = new Random(seed);
        var yaml = new StringBuilder();
        for (var n = 0; n < Namespaces; n++)
        {
            yaml.Append(CultureInfo.InvariantCulture,
                $"apiVersion: v1\nkind: Namespace\nmetadata: {{name: ns{n}, labels: {{tier: t{n % 5}}}}}\n---\n");
            for (var p = 0; p < PodsPerNamespace; p++)
            {
                var app = p % AppsPerNamespace;
                yaml.Append(CultureInfo.InvariantCulture,
                    $"apiVersion: v1\nkind: Pod\nmetadata: {{name: pod{p}, namespace: ns{n}, labels: {{app: app{app}, role: " +
                        $"r{app % 4}}}}}\nspec: {{containers: [{{name: c, ports: [{{name: http, containerPort: " +
                        $"{8000 + app}}}]}}]}}\n---\n");
            }
        }
        for (var i = 0; i < Policies; i++)
        {
            yaml.Append(Policy(i, random));
        }
        var result = ManifestLoader.LoadText(yaml.ToString(), "bench.yaml");
        return result.OrThrow();
    }

    public static string Policy(int i, Random random)
    {
        var ns = random.Next(Namespaces);
        var app = random.Next(AppsPerNamespace);
        var peerApp = random.Next(AppsPerNamespace);
        var kind = i % 10;
        var subject = $"{{matchLabels: {{app: app{app}}}}}";
        var rule = kind switch
        {
            0 => $"ingress: [{{fromEndpoints: [{{matchLabels: {{app: app{peerApp}}}}}]}}]",
            1 or 2 => $"ingress: [{{fromEndpoints: [{{matchLabels: {{role: r{peerApp % 4}}}}}], toPorts: [{{ports: [{{port: " +
                $"\"{8000 + peerApp}\", protocol: TCP}}, {{port: \"9000\", endPort: 9100, protocol: UDP}}]}}]}}]",
            3 or 4 => $"ingress: [{{fromEndpoints: [{{matchLabels: {{app: app{peerApp}}}}}], icmps: [{{fields: [{{type: 8}}, {{type: " +
                $"EchoRequest, family: IPv6}}, {{type: 3, code: 4}}]}}]}}]",
            5 => $"ingressDeny: [{{fromEndpoints: [{{matchLabels: {{io.cilium.k8s.namespace.labels.tier: t{random.Next(5)}}}}}], icmps: " +
                $"[{{fields: [{{type: 13}}]}}]}}]",
            6 => $"egress: [{{toEndpoints: [{{matchLabels: {{app: app{peerApp}}}}}], toPorts: [{{ports: [{{port: http}}]}}]}}]",
            7 => $"egressDeny: [{{toCIDR: [192.0.{random.Next(256)}.0/24]}}]",
            8 => $"egress: [{{toEntities: [world], toPorts: [{{ports: [{{port: \"443\", protocol: TCP}}]}}]}}]",
            _ => $"ingress: [{{fromEntities: [cluster], icmps: [{{fields: [{{type: 128, family: IPv6}}]}}]}}]",
        };
        return i % 25 == 0
            ? $"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: p{i}}}\nspec:\n  endpointSelector: " +
                $"{subject}\n  {rule}\n---\n"
            : $"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: p{i}, namespace: ns{ns}}}\nspec:\n  " +
                $"endpointSelector: {subject}\n  {rule}\n---\n";
    }

    /// <summary>The 100 "local" endpoints resolved: one namespace's worth of pods spread over the cluster.</summary>
    public static IReadOnlyList<string> LocalEndpoints() =>
        Enumerable.Range(0, 100).Select(i => $"ns{i % Namespaces}/pod{i * 7 % PodsPerNamespace}").ToList();

    /// <summary>A cluster-wide policy selecting app0 in every namespace: 5 of the 100 local endpoints.</summary>
    public static PolicyDocument ExtraPolicy() => ManifestLoader.LoadText("""
        apiVersion: cilium.io/v2
        kind: CiliumClusterwideNetworkPolicy
        metadata: {name: extra}
        spec:
          endpointSelector: {matchLabels: {app: app0}}
          ingress:
          - fromEndpoints: [{matchLabels: {app: app1}}]
            icmps: [{fields: [{type: 8}, {type: 128, family: IPv6}]}]
        """, "extra.yaml").OrThrow().Policies[0];

    private static readonly HashSet<string> Local = [.. LocalEndpoints()];

    public static PolicyEngine Engine(ManifestSet set)
    {
        var engine = new PolicyEngine
        {
            IsLocal = Local.Contains,
        };
        engine.Apply(BenchAddresses.Assign(set, System.Net.IPNetwork.Parse("10.0.0.0/8"), System.Net.IPNetwork.Parse("fd00::/64")));
        return engine;
    }
}
