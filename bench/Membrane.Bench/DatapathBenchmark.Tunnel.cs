using System.Net;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Tests;
using Membrane.Policy.Resolution;
using static Membrane.Datapath.Tests.Packets;

namespace Membrane.Bench;

/// <summary>The datapath benchmark's tunnel-mode rows: wrapping and unwrapping VXLAN, single-shot.</summary>
public static partial class DatapathBenchmark
{
    /// <summary>
    /// Tunnel mode's two halves, single-shot (a wrapped or unwrapped packet is another packet: a repeated run would
    /// measure the program on its own output), in a namespace whose FIB knows the underlay (<see cref="UnderlayFib"/>):
    /// the sender's from_pod wrapping an established TCP packet for another node's pod, against the same program for a
    /// destination on no node (its egress verdict and lookups alone), and the receiver's from_underlay unwrapping that
    /// very frame, judging it by the destination's ingress policy and delivering it. Each run beside a floor run; the
    /// ratio is the median of the per-run ratios.
    /// </summary>
    private static List<DatapathResult> Tunnel(PolicyEngine engine, BpfProgram floor, int singles)
    {
        using var fib = new UnderlayFib("mbbench-vxlan");
        using var sender = PolicyDatapath.Load();
        using var receiver = PolicyDatapath.Load();
        var client = engine.FindEndpoint("bench/client")!;
        var server = engine.FindEndpoint("bench/server")!;
        byte[] tunnelMac = [0x02, 0x6d, 192, 0, 2, 1];
        foreach (var loaded in new[] { sender, receiver })
        {
            var policy = new Membrane.Datapath.Sync.PolicyMapSynchronizer(loaded.PolicyMap, loaded.Rules);
            loaded.IpCache.Sync(engine.IpCache());
            loaded.SetHostRouting(true);
            loaded.SetTunnelDevice(fib.Tunnel, tunnelMac);
            if (loaded == sender)
            {
                policy.Sync(IfIndex, engine.Resolve("bench/client").State);
                loaded.Endpoints.Set(IfIndex, client.Addresses);
                // The server's prefix lives on the other node; 10.98.0.0/16 on none of them.
                loaded.Tunnels.Sync([(new System.Net.IPNetwork(server.Address(System.Net.Sockets.AddressFamily.InterNetwork)!, 32),
                    UnderlayFib.OtherNode)]);
            }
            else
            {
                policy.Sync(fib.Pod, engine.Resolve("bench/server").State);
                loaded.Endpoints.Set(fib.Pod, server.Addresses);
                loaded.LocalDelivery.Set(fib.Pod, server.Addresses, new DeliveryMacs(
                    System.Net.NetworkInformation.PhysicalAddress.Parse("02-AA-00-00-00-07"),
                    System.Net.NetworkInformation.PhysicalAddress.Parse("02-BB-00-00-00-07")));
                // The sender's node, as the receiver knows it (the wrapped frames come from the namespace's own address).
                loaded.Tunnels.Sync([(System.Net.IPNetwork.Parse("10.97.0.0/16"), UnderlayFib.ThisNode)]);
            }
        }
        var c = client.Address(System.Net.Sockets.AddressFamily.InterNetwork)!;
        var s = server.Address(System.Net.Sockets.AddressFamily.InterNetwork)!;
        var fromPod = new TestRunContext(IngressIfIndex: fib.Pod);
        byte[] Sent(byte[] frame)
        {
            frame.AsSpan(0, 6).Clear();
            return HopLimit(frame, 64);
        }
        byte[] Wrap(byte[] frame)
        {
            var result = fib.Run(() => sender.FromPod.TestRun(frame, fromPod));
            Require(result.ReturnValue == BpfProgram.TcActRedirect, "from_pod to wrap a packet for another node's pod");
            var wrapped = result.Output.ToArray();
            wrapped.AsSpan(0, 6).Clear(); // as the receiving node meets it: addressed to its device (the test run's, all zeros)
            return wrapped;
        }
        var ack = Sent(Frame(c, s, Tcp, TcpSegment(40000, 80, TcpAck, payload: 64)));
        var away = Sent(Frame(c, IPAddress.Parse("10.98.0.1"), Tcp, TcpSegment(40001, 80, TcpAck, payload: 64)));
        var wrappedSyn = Wrap(Sent(Frame(c, s, Tcp, TcpSegment(40000, 80))));
        var wrappedAck = Wrap(ack);
        Require(fib.Run(() => receiver.FromUnderlay.TestRun(wrappedSyn)).ReturnValue == BpfProgram.TcActRedirect,
            "from_underlay to unwrap and deliver the SYN");
        Require(fib.Run(() => sender.FromPod.TestRun(Sent(Frame(c, IPAddress.Parse("10.98.0.1"), Tcp, TcpSegment(40001, 80))),
            fromPod)).ReturnValue == BpfProgram.TcActOk, "a connection to no node to pass");
        (string Name, Func<TestRunResult> Run)[] scenarios =
        [
            (TunnelEgressOnly, () => sender.FromPod.TestRun(away, fromPod)),
            (TunnelWrapped, () => sender.FromPod.TestRun(ack, fromPod)),
            (TunnelUnwrapped, () => receiver.FromUnderlay.TestRun(wrappedAck)),
        ];
        var floors = new List<double>(singles);
        var times = scenarios.Select(_ => new List<double>(singles)).ToArray();
        var ratios = scenarios.Select(_ => new List<double>(singles)).ToArray();
        fib.Run(() =>
        {
            for (var i = 0; i < singles; i++)
            {
                double floorNs = Math.Max(1, floor.TestRun(ack).DurationNs);
                floors.Add(floorNs);
                for (var k = 0; k < scenarios.Length; k++)
                {
                    var result = scenarios[k].Run();
                    Require(result.ReturnValue == (k == 0 ? BpfProgram.TcActOk : BpfProgram.TcActRedirect), scenarios[k].Name);
                    times[k].Add(result.DurationNs);
                    ratios[k].Add(result.DurationNs / floorNs);
                }
            }
            return 0;
        });
        var method = $"{singles:N0} single runs, each beside a floor run";
        List<DatapathResult> rows = [new(TunnelFloor, Median(floors), 1, method)];
        rows.AddRange(scenarios.Select((x, k) => new DatapathResult(x.Name, Median(times[k]), Median(ratios[k]), method)));
        return rows;
    }
}
