using System.Net;
using System.Text.Json;
using System.Text.RegularExpressions;
using Membrane.Api;

namespace Membrane.Agent.Cni;

/// <summary>What a CNI plugin sends, checked before anything changes: each problem names the CNI parameter to fix.</summary>
public static partial class CniRequestCheck
{
    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")]
    private static partial Regex ContainerIdPattern();

    /// <summary>Interface names as runtimes use them (eth0, net1): nothing that could split an <c>ip -batch</c> line.</summary>
    [GeneratedRegex("^[A-Za-z0-9][A-Za-z0-9_.-]{0,14}$")]
    private static partial Regex InterfaceNamePattern();

    [GeneratedRegex("^(/var)?/run/netns/[^/]+$|^/proc/[0-9]+(/task/[0-9]+)?/ns/net$")]
    private static partial Regex NetnsPattern();

    [GeneratedRegex("^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")]
    private static partial Regex DnsLabel();

    [GeneratedRegex("^[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?$")]
    private static partial Regex DnsSubdomain();

    /// <summary>Checks what a plugin sent before anything changes; each problem names the CNI parameter to fix.</summary>
    public static void Check(CniAttachmentRequest request, bool adding)
    {
        ArgumentNullException.ThrowIfNull(request);
        if (!ContainerIdPattern().IsMatch(request.ContainerId ?? ""))
        {
            throw new AgentInputException($"CNI_CONTAINERID \"{request.ContainerId}\" is not a container id (letters, digits, '_', '.' " +
                "and '-', at most 128)");
        }
        if (!InterfaceNamePattern().IsMatch(request.InterfaceName ?? ""))
        {
            throw new AgentInputException($"CNI_IFNAME \"{request.InterfaceName}\" is not an interface name (1-15 letters, digits, '_', " +
                "'.' and '-')");
        }
        if (!adding)
        {
            return;
        }
        if (request.Netns is null || !NetnsPattern().IsMatch(request.Netns))
        {
            throw new AgentInputException($"CNI_NETNS \"{request.Netns}\" is not a network namespace path (/run/netns/NAME or " +
                "/proc/PID/ns/net)");
        }
        if (!File.Exists(request.Netns))
        {
            throw new AgentInputException($"CNI_NETNS {request.Netns} does not exist");
        }
        if (NetworkNamespaceIdentity.Problem(request.Netns) is { } problem)
        {
            throw new AgentInputException($"CNI_NETNS {request.Netns} {problem}: a container's interface goes only into a " +
                "container's own network namespace");
        }
        if (request.PodName is null)
        {
            throw new AgentInputException("CNI_ARGS has no K8S_POD_NAME: membrane-cni needs the pod's name to find its labels (podman " +
                "and the CRI pass it)");
        }
        if (!DnsSubdomain().IsMatch(request.PodName))
        {
            throw new AgentInputException($"K8S_POD_NAME \"{request.PodName}\" is not a pod name (lowercase letters, digits, '-' and " +
                "'.', at most 253)");
        }
        if (!DnsLabel().IsMatch(request.PodNamespace ?? ""))
        {
            throw new AgentInputException($"K8S_POD_NAMESPACE \"{request.PodNamespace}\" is not a namespace name (lowercase letters, " +
                "digits and '-', at most 63)");
        }
    }

    /// <summary>Chained: the addresses the plugin before gave the container's interface (prevResult's ips).</summary>
    public static List<IPAddress> PreviousAddresses(string prevResult, string interfaceName)
    {
        try
        {
            using var document = JsonDocument.Parse(prevResult);
            var root = document.RootElement;
            var interfaces = root.TryGetProperty("interfaces", out var list) && list.ValueKind == JsonValueKind.Array
                ? list.EnumerateArray().ToList()
                : [];
            var container = interfaces.FindIndex(i => i.TryGetProperty("name", out var n) && n.GetString() == interfaceName
                && i.TryGetProperty("sandbox", out var s) && s.GetString() is { Length: > 0 });
            var addresses = new List<IPAddress>();
            foreach (var ip in root.TryGetProperty("ips", out var ips) && ips.ValueKind == JsonValueKind.Array ? ips.EnumerateArray() : [])
            {
                var onContainer = !ip.TryGetProperty("interface", out var index) || index.GetInt32() == container;
                if (onContainer && ip.TryGetProperty("address", out var address) && IPNetwork.TryParse(address.GetString(), out _))
                {
                    addresses.Add(IPAddress.Parse(address.GetString()!.Split('/')[0]));
                }
            }
            foreach (var address in addresses)
            {
                if (IPAddress.IsLoopback(address) || address.IsIPv6LinkLocal || address.IsIPv6Multicast || address.Equals(IPAddress.Any)
                    || address.Equals(IPAddress.IPv6Any) || (address.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork
                        && (address.GetAddressBytes()[0] >= 224 || address.GetAddressBytes() is [169, 254, _, _])))
                {
                    throw new AgentInputException($"prevResult gives {interfaceName} {address}: loopback, link-local, multicast and " +
                        "unspecified addresses are no pod's (the node and the gateway use them)");
                }
            }
            return addresses.Count > 0
                ? addresses
                : throw new AgentInputException($"prevResult gives {interfaceName} no address: chain membrane-cni after a plugin with " +
                    "IPAM (bridge + host-local)");
        }
        catch (Exception e) when (e is JsonException or InvalidOperationException or FormatException)
        {
            throw new AgentInputException($"prevResult is not a CNI result: {e.Message}");
        }
    }
}
