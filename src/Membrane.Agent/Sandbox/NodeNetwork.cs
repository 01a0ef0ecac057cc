using System.Text.Json;

namespace Membrane.Agent.Sandbox;

/// <summary>
/// The node: a network namespace holding every pod's host-side veth. It forwards between pods and has no route
/// anywhere else, so pod traffic can never reach the machine's real network, and the machine's own settings
/// (forwarding, neighbour tables) are never touched.
/// </summary>
public sealed class NodeNetwork(AgentOptions options)
{
    public string Name => options.NodeNamespace;

    public void Ensure()
    {
        if (!NetworkNamespace.Exists(Name))
        {
            Ip.Run("netns", "add", Name);
        }
        Ip.Batch(Name,
        [
            "link set lo up",
            $"addr replace {AgentOptions.GatewayIPv4}/32 dev lo",
            $"addr replace {options.NodeIPv4}/32 dev lo",
            $"addr replace {options.NodeIPv6}/128 dev lo",
        ]);
        Ip.Exec("ip", ["netns", "exec", Name, "sysctl", "-qw",
            "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1", "net.ipv4.conf.all.rp_filter=0",
            "net.ipv4.conf.default.rp_filter=0"], null);
    }

    public void Delete()
    {
        if (NetworkNamespace.Exists(Name))
        {
            Ip.Run("netns", "delete", Name);
        }
    }

    /// <summary>The interface index of a device in the node namespace, or null when it does not exist.</summary>
    public int? IfIndex(string device)
    {
        try
        {
            var json = Ip.Run("-n", Name, "-j", "link", "show", "dev", device);
            using var doc = JsonDocument.Parse(json);
            return doc.RootElement[0].GetProperty("ifindex").GetInt32();
        }
        catch (InvalidOperationException)
        {
            return null;
        }
    }
}
