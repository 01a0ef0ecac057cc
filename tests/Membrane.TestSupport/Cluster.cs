using System.Net;
using System.Net.Sockets;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;
using Membrane.Policy.Workloads;

namespace Membrane.TestSupport;

/// <summary>A policy engine loaded from YAML, with helpers that ask the trace whether a flow is allowed.</summary>
public sealed class Cluster
{
    /// <summary>Namespaces a (env=prod) and b (env=dev); a/client, a/server (http 80/TCP, dns 53/UDP), b/client, b/other.</summary>
    public const string Workloads = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: a, labels: {env: prod}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: b, labels: {env: dev}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: client, namespace: a, labels: {app: client}}
        spec: {containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: server, namespace: a, labels: {app: server}}
        spec:
          containers:
          - name: s
            ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: client, namespace: b, labels: {app: client}}
        spec: {containers: [{name: c}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: other, namespace: b, labels: {app: other}}
        spec:
          containers:
          - name: o
            ports: [{name: http, containerPort: 8080}]
        """;

    public PolicyEngine Engine { get; } = new();

    public static Cluster With(string policies, string workloads = Workloads)
    {
        var cluster = new Cluster();
        cluster.Engine.Apply(WithAddresses(Load(workloads + "\n---\n" + policies)));
        return cluster;
    }

    /// <summary>
    /// Gives pods without addresses an IPv4 and an IPv6 address, as the agent's IPAM would: host numbers 2, 3, … of
    /// 10.200.0.0/16 and fd00:200::/64 in the order of the pods, skipping addresses pods ask for.
    /// </summary>
    public static ManifestSet WithAddresses(ManifestSet set)
    {
        ArgumentNullException.ThrowIfNull(set);
        var taken = set.Pods.SelectMany(p => p.Addresses).ToHashSet();
        var next = 2;
        IPAddress Next(byte[] prefix)
        {
            while (true)
            {
                var bytes = (byte[])prefix.Clone();
                bytes[^1] = (byte)(next & 0xff);
                bytes[^2] = (byte)(next >> 8);
                var address = new IPAddress(bytes);
                if (!taken.Contains(address))
                {
                    return address;
                }
                next++;
            }
        }
        var pods = set.Pods.Select(pod =>
        {
            if (pod.Addresses.Count > 0)
            {
                return pod;
            }
            var v4 = Next(IPAddress.Parse("10.200.0.0").GetAddressBytes());
            var v6 = Next(IPAddress.Parse("fd00:200::").GetAddressBytes());
            next++;
            return pod with { Addresses = [v4, v6] };
        }).ToList();
        return set with { Pods = pods };
    }

    public static ManifestSet Load(string yaml, string file = "test.yaml")
    {
        var result = ManifestLoader.LoadText(yaml, file);
        Assert.True(result.IsValid, string.Join("\n", result.Errors));
        return result.Manifests;
    }

    public TraceResult Trace(string from, string to, byte protocol, ushort port = 0, byte type = 0, byte? code = null, bool v6 = false) =>
        Tracer.Trace(Engine, new TraceRequest(from, to, protocol, port, type, code,
            v6 || protocol == IpProtocol.IcmpV6 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork));

    public bool Tcp(string from, string to, ushort port) => Trace(from, to, IpProtocol.Tcp, port).Allowed;

    public bool Udp(string from, string to, ushort port) => Trace(from, to, IpProtocol.Udp, port).Allowed;

    public bool Ping(string from, string to, byte type = 8, byte? code = null) => Trace(from, to, IpProtocol.Icmp, 0, type, code).Allowed;

    public bool Ping6(string from, string to, byte type = 128, byte? code = null) => Trace(from, to, IpProtocol.IcmpV6, 0, type,
        code).Allowed;

    public static string Cnp(string name, string ns, string spec) =>
        $"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{Indent(spec)}\n---\n";

    public static string Ccnp(string name, string spec) =>
        $"apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {{name: {name}}}\nspec:\n{Indent(spec)}\n---\n";

    public static string Knp(string name, string ns, string spec) =>
        $"apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {ns}}}\nspec:\n{Indent(spec)}\n---\n";

    private static string Indent(string text) => string.Join("\n", text.Split('\n').Select(l => "  " + l));
}
