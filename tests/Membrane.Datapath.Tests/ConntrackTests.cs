using System.Net;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using static Membrane.Datapath.Tests.Packets;
using static Membrane.TestSupport.Cluster;

namespace Membrane.Datapath.Tests;

/// <summary>The conntrack maps as the control plane sees them: per-family tuples, deletion, timeouts in kernel ticks.</summary>
public sealed class ConntrackTests : IDisposable
{
    private const string ClientConnects_ReceivesNothing = """
        endpointSelector: {matchLabels: {app: client}}
        egress:
        - toPorts: [{ports: [{port: "80", protocol: TCP}, {port: "53", protocol: UDP}]}]
        ingress: [{}]
        """;

    private readonly DatapathHarness _h = new();

    public ConntrackTests() => _h.Use(Cnp("c", "a", ClientConnects_ReceivesNothing), "a/client");

    public void Dispose() => _h.Dispose();

    [Fact]
    public void TheTableListsBothFamiliesAndForgetsWhatIsDeleted()
    {
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server"), c6 = _h.V6("a/client"), s6 = _h.V6("a/server");
        Assert.True(_h.Sends(Frame(c, s, Tcp, TcpSegment(43210, 80))));
        Assert.True(_h.Sends(Frame(c6, s6, Tcp, TcpSegment(43211, 80))));

        var entries = _h.Datapath.Conntrack.Entries().ToList();
        Assert.Equal(2, entries.Count);
        var v4 = Assert.Single(entries, e => e.Key.Lo.AddressFamily == System.Net.Sockets.AddressFamily.InterNetwork);
        var v6 = Assert.Single(entries, e => e.Key.Lo.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6);
        foreach (var (tuple, value, client, server, port) in new[] { (v4.Key, v4.Value, c, s, 43210), (v6.Key, v6.Value, c6, s6, 43211) })
        {
            Assert.Equal(DatapathHarness.TestIfIndex, tuple.IfIndex);
            Assert.Equal(Tcp, tuple.Protocol);
            // Normalised: the opening side is lo or hi as the value says, with its own port.
            var (opener, openerPort, other, otherPort) = value.OpenedLo == 1 ? (tuple.Lo, tuple.LoPort, tuple.Hi, tuple.HiPort)
                : (tuple.Hi, tuple.HiPort, tuple.Lo, tuple.LoPort);
            Assert.Equal((client, (ushort)port, server, (ushort)80), (opener, openerPort, other, otherPort));
            Assert.Equal(1, value.Direction); // opened by the endpoint's egress
            Assert.Equal(1UL, value.Packets);
        }

        Assert.Equal(0, _h.Datapath.Conntrack.Flush(ifIndex: DatapathHarness.TestIfIndex + 1)); // another endpoint's: none
        Assert.True(_h.Datapath.Conntrack.Delete(v4.Key));
        Assert.False(_h.Datapath.Conntrack.Delete(v4.Key), "already gone");
        Assert.False(_h.Receives(Frame(s, c, Tcp, TcpSegment(80, 43210, TcpSyn | TcpAck))), "a forgotten connection's reply meets policy");
        Assert.True(_h.Receives(Frame(s6, c6, Tcp, TcpSegment(80, 43211, TcpSyn | TcpAck))));

        Assert.Equal(1, _h.Datapath.FlushConntrack());
        Assert.False(_h.Receives(Frame(s6, c6, Tcp, TcpSegment(80, 43211, TcpSyn | TcpAck))));
    }

    /// <summary>
    /// Timestamps are kernel ticks: a UDP flow idle for 59 s is alive, one idle for 61 s is gone (60 s timeout).
    /// Fails if the programs and the control plane disagree on the tick rate or the unit.
    /// </summary>
    [Theory]
    [InlineData(59, true)]
    [InlineData(61, false)]
    public void AnIdleConnectionExpiresAfterItsTimeout(int idleSeconds, bool replyPasses)
    {
        IPAddress c = _h.V4("a/client"), s = _h.V4("a/server");
        Assert.True(_h.Sends(Frame(c, s, Udp, UdpDatagram(5353, 53))));

        var (key, value) = Assert.Single(_h.Datapath.Conntrack.Entries());
        var now = KernelTicks.Now() ?? throw new InvalidOperationException("/proc/timer_list has no jiffies line");
        Assert.InRange(ConntrackTable.SecondsSince(value.LastSeen, now), 0, 5);
        value.LastSeen -= (ulong)idleSeconds * KernelTicks.PerSecond;
        Assert.True(_h.Datapath.Conntrack.Update(key, value));

        Assert.Equal(replyPasses, _h.Receives(Frame(s, c, Udp, UdpDatagram(53, 5353))));
        Assert.Equal(replyPasses ? 1 : 0, _h.Datapath.Conntrack.Entries().Count());
    }
}
