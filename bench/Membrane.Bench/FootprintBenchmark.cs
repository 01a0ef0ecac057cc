using System.Globalization;
using System.Text;
using Membrane.Datapath;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;

namespace Membrane.Bench;

public sealed record FootprintResult(int PeerIdentities, int Entries, long KernelBytes, double BytesPerEntry, bool FitsReferenceDefault);

/// <summary>
/// Policy-map entries and kernel memory for one endpoint whose policy selects N peer identities (two TCP ports and
/// one ICMP type each), measured by writing the entries into a real map and reading the kernel's own accounting.
/// </summary>
public static class FootprintBenchmark
{
    public const int ReferenceDefaultEntries = 16_384;

    public static IReadOnlyList<FootprintResult> Run()
    {
        var results = new List<FootprintResult>();
        foreach (var peers in new[] { 10, 1000, 10_000 })
        {
            var yaml = new StringBuilder("apiVersion: v1\nkind: Namespace\nmetadata: {name: fp}\n---\n");
            yaml.Append("apiVersion: v1\nkind: Pod\nmetadata: {name: target, namespace: fp, labels: {app: target}}\nspec: {containers: " +
                "[{name: c}]}\n---\n");
            for (var i = 0; i < peers; i++)
            {
                // Distinct labels: one identity per peer pod.
                yaml.Append(CultureInfo.InvariantCulture,
                    $"apiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, namespace: fp, labels: {{role: peer, n: \"{i}\"}}}}\nspec: " +
                    $"{{containers: [{{name: c}}]}}\n---\n");
            }
            yaml.Append("""
                apiVersion: cilium.io/v2
                kind: CiliumNetworkPolicy
                metadata: {name: fp, namespace: fp}
                spec:
                  endpointSelector: {matchLabels: {app: target}}
                  ingress:
                  - fromEndpoints: [{matchLabels: {role: peer}}]
                    toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "443", protocol: TCP}]}]
                  - fromEndpoints: [{matchLabels: {role: peer}}]
                    icmps: [{fields: [{type: 8}]}]
                """);
            var engine = new PolicyEngine();
            engine.Apply(BenchAddresses.Assign(ManifestLoader.LoadText(yaml.ToString(), "fp.yaml").OrThrow(),
                System.Net.IPNetwork.Parse("10.0.0.0/8"), System.Net.IPNetwork.Parse("fd00::/64")));
            var state = engine.Resolve("fp/target").State;
            using var datapath = PolicyDatapath.Load();
            var before = KernelBytes(datapath.PolicyMap.Fd);
            new Membrane.Datapath.Sync.PolicyMapSynchronizer(datapath.PolicyMap, datapath.Rules).Sync(1, state);
            var bytes = KernelBytes(datapath.PolicyMap.Fd) - before;
            results.Add(new FootprintResult(peers, state.Count, bytes, (double)bytes / state.Count,
                state.Count <= ReferenceDefaultEntries));
        }
        return results;
    }

    /// <summary>The kernel's memory accounting of a map (the "memlock" line of its fdinfo).</summary>
    private static long KernelBytes(int fd)
    {
        foreach (var line in File.ReadLines($"/proc/self/fdinfo/{fd}"))
        {
            if (line.StartsWith("memlock:", StringComparison.Ordinal))
            {
                return long.Parse(line["memlock:".Length..].Trim(), CultureInfo.InvariantCulture);
            }
        }
        throw new InvalidOperationException("no memlock in fdinfo");
    }
}
