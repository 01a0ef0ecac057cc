using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Membrane.Agent.Endpoints;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Cni;

/// <summary>
/// Endpoints handed over by container runtimes through the CNI plugin. The node is the machine's own network
/// namespace, as on a real node. Interface mode: the agent makes a veth pair, moves the peer into the container's
/// namespace, gives it its addresses and a default route through the gateway addresses on the host end, and routes
/// the pod's addresses to the host end (forwarding is enabled on that interface only; the host's other interfaces,
/// routes and firewall are never touched). Chained mode: an earlier plugin made the veth; the agent only finds its
/// host end and attaches there. The agent deletes only interfaces it made (tagged with an alias naming the agent).
/// </summary>
public sealed class CniRuntime(AgentOptions options, CniAttachments attachments) : IEndpointRuntime
{
    private const string HostNamespace = "/proc/self/ns/net";

    public string NodeNamespace => HostNamespace;

    /// <summary>
    /// The pods' gateways (addresses of every host end), every address of the node's interfaces (a chained plugin's
    /// bridge address is a pod's gateway too) with their subnets' broadcasts, and the node-scoped prefixes; read anew
    /// at every regeneration.
    /// </summary>
    public IReadOnlyList<IPNetwork> HostPrefixes =>
        [NodeScope.HostRoute(AgentOptions.GatewayIPv4), .. NodeScope.OfThisNamespace(), .. NodeScope.Prefixes];

    private string AliasPrefix => $"membrane:{options.NamePrefix}:";

    /// <summary>The host end's name: short (15 bytes at most) and the same for the same container interface.</summary>
    public static string HostInterfaceName(string containerId, string interfaceName) =>
        "mc" + Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes($"{containerId}/{interfaceName}")))[..11];

    public void Prepare()
    {
    }

    public EndpointRecord Create(Endpoint endpoint)
    {
        ArgumentNullException.ThrowIfNull(endpoint);
        var attachment = attachments.ForPod(endpoint.Key)
            ?? throw new InvalidOperationException($"pod {endpoint.Key} has no CNI attachment");
        if (!File.Exists(attachment.Netns))
        {
            throw new AgentInputException($"the container's network namespace {attachment.Netns} does not exist");
        }
        return attachment.Chained ? FindChained(endpoint.Key, attachment) : CreateVeth(endpoint.Key, attachment);
    }

    private EndpointRecord CreateVeth(string key, CniAttachment a)
    {
        var host = HostInterfaceName(a.ContainerId, a.InterfaceName);
        var addresses = a.Addresses.Select(IPAddress.Parse).ToList();
        RemoveOwn(host);
        Ip.Run("link", "add", host, "mtu", "1500", "type", "veth", "peer", "name", a.InterfaceName, "netns", a.Netns);
        try
        {
            Ip.Run("link", "set", "dev", host, "alias", $"{AliasPrefix}{a.ContainerId}/{a.InterfaceName}");
            var inside = new List<string> { $"link set {a.InterfaceName} up" };
            foreach (var address in addresses)
            {
                inside.Add(address.AddressFamily == AddressFamily.InterNetwork
                    ? $"addr add {address}/32 dev {a.InterfaceName}"
                    : $"addr add {address}/128 dev {a.InterfaceName} nodad");
            }
            inside.Add($"route add {AgentOptions.GatewayIPv4} dev {a.InterfaceName} scope link");
            inside.Add($"route add default via {AgentOptions.GatewayIPv4} dev {a.InterfaceName}");
            inside.Add($"route add default via {AgentOptions.GatewayIPv6} dev {a.InterfaceName}");
            InContainer(a.Netns, ["ip", "-batch", "-"], string.Join("\n", inside) + "\n");
            // Forwarding on this interface only: what enters from the pod may be routed; nothing else changes.
            Sysctl($"ipv4/conf/{host}/forwarding", required: true);
            Sysctl($"ipv6/conf/{host}/force_forwarding", required: false);
            var outside = new List<string>
            {
                $"addr add {AgentOptions.GatewayIPv4}/32 dev {host} noprefixroute",
                $"addr add {AgentOptions.GatewayIPv6}/64 dev {host} nodad",
                $"link set {host} up",
            };
            outside.AddRange(addresses.Select(address =>
                $"route add {address}/{(address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128)} dev {host}"));
            Ip.Batch(null, outside);
            var ifIndex = IfIndex(host) ?? throw new InvalidOperationException($"veth {host} vanished");
            return new EndpointRecord(key, a.Netns, host, ifIndex, a.Addresses);
        }
        catch
        {
            RemoveOwn(host);
            throw;
        }
    }

    /// <summary>Chained: the container's interface is one end of a veth pair; its peer's index names the host end.</summary>
    private static EndpointRecord FindChained(string key, CniAttachment a)
    {
        var link = InContainer(a.Netns, ["ip", "-j", "link", "show", "dev", a.InterfaceName], null);
        using var document = JsonDocument.Parse(link);
        var own = document.RootElement[0].GetProperty("ifindex").GetInt32();
        // link_index is an index in the peer's namespace, which may be another container's: it names a host interface only
        // when that interface's own peer is this one. Otherwise the programs would go on an unrelated host interface.
        var peer = document.RootElement[0].TryGetProperty("link_index", out var index)
            && document.RootElement[0].TryGetProperty("link_netnsid", out _) ? index.GetInt32() : 0;
        var host = peer == 0 ? null : NameOf(peer);
        if (host is null || PeerIndexOf(host) != own)
        {
            throw new AgentInputException($"the container's {a.InterfaceName} is not a veth whose peer is in the host's network " +
                "namespace; chain membrane-cni after a plugin that makes a veth pair (bridge, ptp)");
        }
        return new EndpointRecord(key, a.Netns, host, peer, a.Addresses);
    }

    public bool IsIntact(EndpointRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        return IfIndex(record.HostInterface) == record.IfIndex;
    }

    public void Adopt(Endpoint endpoint, EndpointRecord record)
    {
        // Nothing runs beside a container's interface: the runtime runs the container.
    }

    public void Delete(string key, EndpointRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        if (IsOwn(record.HostInterface))
        {
            RemoveOwn(record.HostInterface); // the peer, its addresses and the routes go with it
        }
        // Chained: the interface is the earlier plugin's to remove; only the programs were ours (the endpoint manager
        // detached them).
    }

    /// <summary>Host ends this agent made for containers that are none of <paramref name="keep"/> (left by a crash).</summary>
    public void RemoveOrphans(IEnumerable<string> keep)
    {
        var expected = keep.Select(attachments.ForPod).OfType<CniAttachment>()
            .Select(a => HostInterfaceName(a.ContainerId, a.InterfaceName)).ToHashSet(StringComparer.Ordinal);
        foreach (var name in OwnInterfaces().Where(n => !expected.Contains(n)))
        {
            RemoveOwn(name);
        }
    }

    /// <summary>Only the interfaces the agent made are routed by the node; a chained one sits on its plugin's bridge.</summary>
    public DeliveryMacs? Delivery(EndpointRecord record)
    {
        ArgumentNullException.ThrowIfNull(record);
        return attachments.ForPod(record.Key) is { Chained: false } a && NetworkNamespace.MacOf(a.Netns, a.InterfaceName) is { } pod
            && NetworkNamespace.MacOf(HostNamespace, record.HostInterface) is { } gateway
            ? new DeliveryMacs(pod, gateway)
            : null;
    }

    /// <summary>The container's interface as it is now: its MAC and addresses (CHECK and the ADD result).</summary>
    public static (string Mac, IReadOnlyList<IPAddress> Addresses) Inspect(string netns, string interfaceName)
    {
        var text = InContainer(netns, ["ip", "-j", "addr", "show", "dev", interfaceName], null);
        using var document = JsonDocument.Parse(text);
        var link = document.RootElement[0];
        var addresses = link.GetProperty("addr_info").EnumerateArray()
            .Select(a => IPAddress.Parse(a.GetProperty("local").GetString()!))
            .Where(a => !a.IsIPv6LinkLocal).ToList();
        return (link.GetProperty("address").GetString() ?? "", addresses);
    }

    public static string? MacOf(string device)
    {
        try
        {
            using var document = JsonDocument.Parse(Ip.Run("-j", "link", "show", "dev", device));
            return document.RootElement[0].GetProperty("address").GetString();
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>True when the programs are attached in both directions on the host end.</summary>
    public static bool ProgramsAttached(DeviceHooks hooks, int ifIndex) => NetworkNamespace.Run(HostNamespace, () =>
        hooks.Query(ifIndex, TcDirection.Ingress) is not null && hooks.Query(ifIndex, TcDirection.Egress) is not null);

    private bool IsOwn(string device)
    {
        try
        {
            using var document = JsonDocument.Parse(Ip.Run("-j", "link", "show", "dev", device));
            return document.RootElement[0].TryGetProperty("ifalias", out var alias)
                && alias.GetString()?.StartsWith(AliasPrefix, StringComparison.Ordinal) == true;
        }
        catch (InvalidOperationException)
        {
            return false;
        }
    }

    private List<string> OwnInterfaces() => InterfacesTagged(AliasPrefix);

    /// <summary>Removes every host end an agent with this name prefix made (<c>membrane cleanup</c>); how many.</summary>
    public static int RemoveInterfaces(string namePrefix)
    {
        var names = InterfacesTagged($"membrane:{namePrefix}:");
        foreach (var name in names)
        {
            Ip.Run("link", "delete", "dev", name);
        }
        return names.Count;
    }

    private static List<string> InterfacesTagged(string prefix)
    {
        using var document = JsonDocument.Parse(Ip.Run("-j", "link", "show"));
        return document.RootElement.EnumerateArray()
            .Where(l => l.TryGetProperty("ifalias", out var alias)
                && alias.GetString()?.StartsWith(prefix, StringComparison.Ordinal) == true)
            .Select(l => l.GetProperty("ifname").GetString()!).ToList();
    }

    private void RemoveOwn(string device)
    {
        if (IsOwn(device))
        {
            Ip.Run("link", "delete", "dev", device);
        }
        else if (IfIndex(device) is not null && device.StartsWith("mc", StringComparison.Ordinal) && device.Length == 13)
        {
            throw new InvalidOperationException($"an interface {device} exists that this agent did not make; remove it or use another " +
                "--name-prefix");
        }
    }

    private static int? IfIndex(string device)
    {
        try
        {
            using var document = JsonDocument.Parse(Ip.Run("-j", "link", "show", "dev", device));
            return document.RootElement[0].GetProperty("ifindex").GetInt32();
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }

    /// <summary>The index of a host interface's veth peer (0: not a veth, or its peer is in this namespace).</summary>
    private static int PeerIndexOf(string device)
    {
        using var document = JsonDocument.Parse(Ip.Run("-j", "link", "show", "dev", device));
        var link = document.RootElement[0];
        return link.TryGetProperty("link_index", out var index) && link.TryGetProperty("link_netnsid", out _) ? index.GetInt32() : 0;
    }

    private static string? NameOf(int ifIndex)
    {
        using var document = JsonDocument.Parse(Ip.Run("-j", "link", "show"));
        return document.RootElement.EnumerateArray()
            .Where(l => l.GetProperty("ifindex").GetInt32() == ifIndex)
            .Select(l => l.GetProperty("ifname").GetString()).FirstOrDefault();
    }

    private static string InContainer(string netns, IEnumerable<string> command, string? input) =>
        Ip.Exec("nsenter", new[] { $"--net={netns}", "--" }.Concat(command), input);

    private static void Sysctl(string name, bool required)
    {
        var path = $"/proc/sys/net/{name}";
        if (!File.Exists(path))
        {
            if (required)
            {
                throw new InvalidOperationException($"{path} does not exist");
            }
            return;
        }
        File.WriteAllText(path, "1");
    }

    internal static string Prefix(IPAddress address) =>
        string.Create(CultureInfo.InvariantCulture, $"{address}/{(address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128)}");
}
