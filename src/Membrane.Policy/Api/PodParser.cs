using System.Net;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Api;

/// <summary>The spec and status of a Pod manifest: ports, service account, requested addresses.</summary>
internal static class PodParser
{
    public static PodManifest? Pod(ParseContext ctx, MapReader map, string ns, string name, IReadOnlyDictionary<string, string> labels,
        string file)
    {
        var errorsBefore = ctx.ErrorCount;
        var spec = MapReader.Of(ctx, map.Take("spec"), "spec");
        var status = MapReader.Of(ctx, map.Take("status"), "status");
        map.Finish();
        if (spec is null)
        {
            return null;
        }
        var serviceAccount = spec.String("serviceAccountName") ?? spec.String("serviceAccount") ?? "default";
        if (spec.Bool("hostNetwork") == true)
        {
            ctx.Error(spec.PathOf("hostNetwork"), spec.Node, "host-network pods are not supported by the sandbox");
        }
        var nodeName = spec.String("nodeName");
        if (nodeName is not null && Names.CheckObjectName(nodeName) is { } badNode)
        {
            ctx.Error(spec.PathOf("nodeName"), spec.Node, badNode);
        }
        spec.Ignore("initContainers", "restartPolicy", "terminationGracePeriodSeconds", "securityContext",
            "volumes", "dnsPolicy", "tolerations", "affinity", "nodeSelector", "priorityClassName", "hostname",
            "subdomain", "automountServiceAccountToken", "enableServiceLinks", "imagePullSecrets", "schedulerName");
        var ports = new List<ContainerPort>();
        var containers = spec.List("containers", (item, p) => Container(ctx, item, p)) ?? [];
        foreach (var list in containers)
        {
            ports.AddRange(list);
        }
        spec.Finish();
        var addresses = new List<IPAddress>();
        if (status is not null)
        {
            status.Ignore("phase", "conditions", "hostIP", "hostIPs", "startTime", "containerStatuses", "qosClass");
            var podIp = status.String("podIP");
            var podIps = status.List("podIPs", (item, p) =>
            {
                var m = MapReader.Of(ctx, item, p);
                var ip = m?.String("ip", required: true);
                m?.Finish();
                return ip;
            }) ?? [];
            status.Finish();
            foreach (var (text, path) in (podIp is null ? [] : new[] { (podIp, "status.podIP") }).Concat(podIps.Select((t, i) => (t!,
                $"status.podIPs[{i}].ip"))))
            {
                if (IPAddress.TryParse(text, out var address))
                {
                    if (!addresses.Contains(address))
                    {
                        addresses.Add(address);
                    }
                }
                else
                {
                    ctx.Error(path, status.Node, $"\"{text}\" is not an IP address");
                }
            }
        }
        var names = new HashSet<string>(StringComparer.Ordinal);
        foreach (var port in ports.Where(p => p.Name is not null))
        {
            if (!names.Add(port.Name!))
            {
                ctx.Error("spec.containers", spec.Node, $"port name \"{port.Name}\" is declared twice");
            }
        }
        return ctx.ErrorCount == errorsBefore
            ? new PodManifest(ns, name, labels, serviceAccount, ports, addresses, file) { NodeName = nodeName }
            : null;
    }

    private static List<ContainerPort>? Container(ParseContext ctx, YamlNode node, string path)
    {
        var map = MapReader.Of(ctx, node, path);
        if (map is null)
        {
            return null;
        }
        map.String("name", required: true);
        map.Ignore("image", "command", "args", "env", "envFrom", "resources", "imagePullPolicy", "securityContext",
            "volumeMounts", "readinessProbe", "livenessProbe", "startupProbe", "workingDir", "lifecycle", "stdin", "tty",
            "terminationMessagePath", "terminationMessagePolicy");
        var ports = map.List("ports", (item, p) =>
        {
            var pm = MapReader.Of(ctx, item, p);
            if (pm is null)
            {
                return null;
            }
            var name = pm.String("name");
            var number = Yaml.IntInRange(ctx, pm.Take("containerPort"), pm.PathOf("containerPort"), 1, 65535, "a container port");
            if (!pm.Has("containerPort") && number is null)
            {
                ctx.Error(pm.PathOf("containerPort"), item, "is required");
            }
            var protocolText = pm.String("protocol") ?? "TCP";
            pm.Ignore("hostPort", "hostIP");
            pm.Finish();
            PortProtocol? protocol = protocolText switch
            {
                "TCP" => PortProtocol.Tcp,
                "UDP" => PortProtocol.Udp,
                "SCTP" => PortProtocol.Sctp,
                _ => null,
            };
            if (protocol is null)
            {
                ctx.Error(pm.PathOf("protocol"), item, $"\"{protocolText}\" is not a valid protocol (TCP, UDP or SCTP)");
            }
            if (name is not null && !Names.IsPortName(name))
            {
                ctx.Error(pm.PathOf("name"), item, $"\"{name}\" is not a valid port name (at most 15 lowercase letters, digits and '-')");
            }
            return number is { } n && protocol is { } proto ? new ContainerPort(name, n, proto) : null;
        });
        map.Finish();
        return ports ?? [];
    }
}
