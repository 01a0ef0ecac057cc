using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;

namespace Membrane.Policy.Tests.Resolution;

public sealed class MapStateTests
{
    [Theory]
    [InlineData(80, 80, "80/16")]
    [InlineData(80, 81, "80/15")]
    [InlineData(0, 65535, "0/0")]
    [InlineData(8000, 8100, "8000/10 8064/11 8096/14 8100/16")]
    [InlineData(1, 3, "1/16 2/15")]
    public void RangeSplitsIntoPrefixes(int first, int last, string expected)
    {
        var prefixes = MapState.RangeToPrefixes(first, last).ToList();
        Assert.Equal(expected, string.Join(" ", prefixes.Select(p => $"{p.Port}/{p.Prefix}")));
        var covered = prefixes.SelectMany(p => Enumerable.Range(p.Port, 1 << (16 - p.Prefix))).ToList();
        Assert.Equal(Enumerable.Range(first, last - first + 1), covered);
    }

    [Fact]
    public void IcmpKeysPrintTypeAndCode()
    {
        Assert.Equal("8/ICMP", PolicyKey.Create(TrafficDirection.Ingress, 1, IpProtocol.Icmp, 8 << 8, 8).PortProtocol);
        Assert.Equal("3:4/ICMP", PolicyKey.Create(TrafficDirection.Ingress, 1, IpProtocol.Icmp, 3 << 8 | 4, 16).PortProtocol);
        Assert.Equal("128/ICMPv6", PolicyKey.Create(TrafficDirection.Ingress, 1, IpProtocol.IcmpV6, 128 << 8, 8).PortProtocol);
        Assert.Equal("80-95/TCP", PolicyKey.Create(TrafficDirection.Ingress, 1, IpProtocol.Tcp, 80, 12).PortProtocol);
        Assert.Equal("ANY", PolicyKey.Create(TrafficDirection.Ingress, 1, IpProtocol.Any, 0, 0).PortProtocol);
    }

    [Fact]
    public void TypeZeroKeyIsExactNotAWildcard()
    {
        var key = PolicyKey.Create(TrafficDirection.Ingress, 5, IpProtocol.Icmp, 0, 8);
        Assert.True(key.Matches(5, IpProtocol.Icmp, 0 << 8 | 3));
        Assert.False(key.Matches(5, IpProtocol.Icmp, 8 << 8));
    }

    [Fact]
    public void MatchKindFollowsTheKey()
    {
        Assert.Equal(MatchKind.Any, PolicyKey.Create(TrafficDirection.Egress, 0, 0, 0, 0).Kind);
        Assert.Equal(MatchKind.L3Only, PolicyKey.Create(TrafficDirection.Egress, 300, 0, 0, 0).Kind);
        Assert.Equal(MatchKind.L4Only, PolicyKey.Create(TrafficDirection.Egress, 0, IpProtocol.Tcp, 80, 16).Kind);
        Assert.Equal(MatchKind.L3L4, PolicyKey.Create(TrafficDirection.Egress, 300, IpProtocol.Udp, 53, 16).Kind);
        Assert.Equal(MatchKind.Icmp, PolicyKey.Create(TrafficDirection.Egress, 300, IpProtocol.IcmpV6, 128 << 8, 8).Kind);
    }
}
