using System.Net;
using System.Net.NetworkInformation;
using Membrane.Agent.Sandbox;

namespace Membrane.Datapath.Tests;

/// <summary>
/// A network namespace of its own where BPF_PROG_TEST_RUN meets a node's underlay as <c>bpf_fib_lookup</c> sees it:
/// this node's address on <c>ul0</c>, the other node behind a permanent neighbour entry, forwarding on, a stand-in
/// tunnel device (<c>vx0</c>, the tunnel's MTU) and a pod's host-side veth (<c>pod0</c>). Test runs made inside it
/// (<see cref="Run{T}"/>) see these devices; the sender is the namespace's loopback (ifindex 1) as in every test run.
/// Shared by the tests and the benchmark.
/// </summary>
public sealed class UnderlayFib : IDisposable
{
    public static readonly IPAddress ThisNode = IPAddress.Parse("192.0.2.1");
    public static readonly IPAddress OtherNode = IPAddress.Parse("192.0.2.2");
    public static readonly byte[] OtherNodeMac = [0x02, 0, 0, 0, 0, 0x02];

    public UnderlayFib(string name)
    {
        Name = name;
        if (NetworkNamespace.Exists(name))
        {
            Ip.Run("netns", "delete", name);
        }
        Ip.Run("netns", "add", name);
        try
        {
            Ip.Batch(name,
            [
                "link set lo up",
                "link add ul0 type veth peer name ul1",
                "link add vx0 mtu 1450 type veth peer name vx1",
                "link add pod0 type veth peer name pod1",
                "link set ul0 up", "link set ul1 up", "link set vx0 up", "link set vx1 up", "link set pod0 up", "link set pod1 up",
                $"addr add {ThisNode}/24 dev ul0",
            ]);
            RestoreNeighbour();
            Ip.Exec("ip", ["netns", "exec", name, "sysctl", "-qw", "net.ipv4.conf.all.forwarding=1"], null);
            (Pod, Tunnel, UnderlayMac) = Run(() => (IfIndex("pod0"), IfIndex("vx0"), Interface("ul0").GetPhysicalAddress()));
        }
        catch
        {
            Ip.Run("netns", "delete", name);
            throw;
        }
    }

    public string Name { get; }

    /// <summary>The pod's host-side veth: where a pod's packet comes in, and a local pod's delivery device.</summary>
    public uint Pod { get; }

    /// <summary>The stand-in for the node's VXLAN device: its MTU is what from_pod checks a packet against.</summary>
    public uint Tunnel { get; }

    /// <summary>The underlay device's address: the outer frame's source.</summary>
    public PhysicalAddress UnderlayMac { get; }

    public T Run<T>(Func<T> action) => NetworkNamespace.Run(Name, action);

    public void ForgetNeighbour() => Ip.Run("-n", Name, "neigh", "delete", OtherNode.ToString(), "dev", "ul0");

    public void RestoreNeighbour() => Ip.Run("-n", Name, "neigh", "replace", OtherNode.ToString(), "lladdr",
        string.Join(':', OtherNodeMac.Select(b => b.ToString("x2", System.Globalization.CultureInfo.InvariantCulture))), "dev", "ul0",
        "nud", "permanent");

    public void Dispose() => Ip.Run("netns", "delete", Name);

    private static NetworkInterface Interface(string name) => NetworkInterface.GetAllNetworkInterfaces().Single(i => i.Name == name);

    private static uint IfIndex(string name) => (uint)Interface(name).GetIPProperties().GetIPv4Properties().Index;
}
