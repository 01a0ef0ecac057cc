using System.Net;
using System.Net.Sockets;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;
using static Membrane.Datapath.Tests.Packets;

namespace Membrane.Datapath.Tests;

/// <summary>
/// Random policies (through the real loader and engine) and random packets: the kernel's verdict must equal the
/// policy engine's for every packet. Each packet is a new flow (conntrack is flushed), so policy decides.
/// </summary>
public sealed class DifferentialTests : IDisposable
{
    private readonly DatapathHarness _h = new();

    public void Dispose() => _h.Dispose();

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    public void KernelVerdictEqualsPolicyEngineVerdict(int block)
    {
        var compared = 0;
        var allowed = 0;
        for (var seed = 50_000 + block * 1000; seed < 50_000 + block * 1000 + 60; seed++)
        {
            var generator = new RandomPolicies(seed);
            var yaml = generator.Generate();
            var engine = Cluster.With(yaml).Engine;
            _h.Datapath.IpCache.Sync(engine.IpCache());
            foreach (var subject in RandomPolicies.Pods)
            {
                var policy = engine.Resolve(subject);
                _h.Policy.Sync(DatapathHarness.TestIfIndex, policy.State);
                _h.Datapath.Endpoints.Set(DatapathHarness.TestIfIndex, engine.FindEndpoint(subject)!.Addresses);
                foreach (var peer in RandomPolicies.Pods.Where(p => p != subject).Append("world"))
                {
                    for (var i = 0; i < 4; i++)
                    {
                        var flow = RandomPolicies.Flows[generator.Next(RandomPolicies.Flows.Length)];
                        var family = flow.Protocol == IpProtocol.IcmpV6 || generator.Next(3) == 0 && !IpProtocol.IsIcmp(flow.Protocol)
                            ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork;
                        var mine = engine.FindEndpoint(subject)!.Address(family)!;
                        var theirs = peer == "world"
                            ? IPAddress.Parse(family == AddressFamily.InterNetwork ? "198.51.100.7" : "2001:db8::7")
                            : engine.FindEndpoint(peer)!.Address(family)!;
                        var request = new TraceRequest(subject, peer, flow.Protocol, flow.Port, flow.Type, flow.Code, family);
                        var l4 = flow.Protocol switch
                        {
                            Tcp => TcpSegment((ushort)(30000 + i), flow.Port),
                            Udp => UdpDatagram((ushort)(30000 + i), flow.Port),
                            Sctp => SctpPacket((ushort)(30000 + i), flow.Port),
                            _ => IcmpMessage(flow.Type, flow.Code ?? 0, (ushort)(100 + i)),
                        };
                        foreach (var direction in new[] { TrafficDirection.Egress, TrafficDirection.Ingress })
                        {
                            var frame = direction == TrafficDirection.Egress ? Frame(mine, theirs, flow.Protocol, l4) : Frame(theirs, mine,
                                flow.Protocol, l4);
                            var expected = Tracer.Side(policy, direction, engine.IdentityOf(theirs), request).Allowed;
                            var actual = direction == TrafficDirection.Egress ? _h.Sends(frame) : _h.Receives(frame);
                            _h.Datapath.FlushConntrack();
                            Assert.True(expected == actual,
                                $"seed {seed}: {subject} {direction} {peer} {request.Describe()} {family}: engine " +
                                    $"{(expected ? "allows" : "denies")}, kernel {(actual ? "allows" : "denies")}\n{yaml}");
                            compared++;
                            allowed += actual ? 1 : 0;
                        }
                    }
                }
            }
        }
        Assert.Equal(60 * 4 * 4 * 4 * 2, compared);
        Assert.InRange(allowed, compared / 10, compared * 9 / 10); // both verdicts well represented
    }
}
