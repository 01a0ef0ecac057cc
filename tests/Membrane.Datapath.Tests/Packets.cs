using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;

namespace Membrane.Datapath.Tests;

/// <summary>Crafts Ethernet frames for BPF_PROG_TEST_RUN. Checksums are left zero: the programs do not check them.</summary>
internal static class Packets
{
    public const byte Tcp = 6, Udp = 17, Icmp = 1, IcmpV6 = 58, Sctp = 132;
    public const byte TcpSyn = 0x02, TcpAck = 0x10;

    public static byte[] Ethernet(ushort etherType, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[14 + payload.Length];
        frame[0] = 0x02; frame[6] = 0x02; frame[11] = 1;
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(12), etherType);
        payload.CopyTo(frame.AsSpan(14));
        return frame;
    }

    /// <summary>IPv4 packet; <paramref name="fragment"/> is the raw flags+offset field (0x2000 = more fragments).</summary>
    public static byte[] IPv4Packet(IPAddress source, IPAddress destination, byte protocol, ReadOnlySpan<byte> l4, ushort id = 1,
        ushort fragment = 0, int optionBytes = 0)
    {
        var header = 20 + optionBytes;
        var ip = new byte[header + l4.Length];
        ip[0] = (byte)(0x40 | header / 4);
        BinaryPrimitives.WriteUInt16BigEndian(ip.AsSpan(2), (ushort)ip.Length);
        BinaryPrimitives.WriteUInt16BigEndian(ip.AsSpan(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(ip.AsSpan(6), fragment);
        ip[8] = 64;
        ip[9] = protocol;
        source.GetAddressBytes().CopyTo(ip, 12);
        destination.GetAddressBytes().CopyTo(ip, 16);
        for (var i = 20; i < header; i++)
        {
            ip[i] = 1; // NOP options
        }
        l4.CopyTo(ip.AsSpan(header));
        return ip;
    }

    /// <summary>IPv6 packet with optional extension headers given as (type, body) with body padded to 8-byte units.</summary>
    public static byte[] IPv6Packet(IPAddress source, IPAddress destination, byte protocol, ReadOnlySpan<byte> l4, params (byte Type,
        byte[] Body)[] extensions)
    {
        var ext = new List<byte>();
        for (var i = 0; i < extensions.Length; i++)
        {
            var next = i + 1 < extensions.Length ? extensions[i + 1].Type : protocol;
            var body = extensions[i].Body;
            if (extensions[i].Type == 44)
            {
                ext.Add(next);
                ext.AddRange(body); // fragment header: 7 more bytes given by the caller
                continue;
            }
            var length = (body.Length + 2 + 7) / 8 * 8;
            ext.Add(next);
            ext.Add((byte)(length / 8 - 1));
            ext.AddRange(body);
            ext.AddRange(new byte[length - 2 - body.Length]);
        }
        var ip = new byte[40 + ext.Count + l4.Length];
        ip[0] = 0x60;
        BinaryPrimitives.WriteUInt16BigEndian(ip.AsSpan(4), (ushort)(ext.Count + l4.Length));
        ip[6] = extensions.Length > 0 ? extensions[0].Type : protocol;
        ip[7] = 64;
        source.GetAddressBytes().CopyTo(ip, 8);
        destination.GetAddressBytes().CopyTo(ip, 24);
        ext.CopyTo(ip, 40);
        l4.CopyTo(ip.AsSpan(40 + ext.Count));
        return ip;
    }

    public static byte[] FragmentHeaderBody(ushort offsetUnits, bool more, uint id)
    {
        var body = new byte[7];
        BinaryPrimitives.WriteUInt16BigEndian(body.AsSpan(1), (ushort)(offsetUnits << 3 | (more ? 1 : 0)));
        BinaryPrimitives.WriteUInt32BigEndian(body.AsSpan(3), id);
        return body;
    }

    public static byte[] TcpSegment(ushort sport, ushort dport, byte flags = TcpSyn, int payload = 0)
    {
        var tcp = new byte[20 + payload];
        BinaryPrimitives.WriteUInt16BigEndian(tcp, sport);
        BinaryPrimitives.WriteUInt16BigEndian(tcp.AsSpan(2), dport);
        tcp[12] = 5 << 4;
        tcp[13] = flags;
        return tcp;
    }

    public static byte[] UdpDatagram(ushort sport, ushort dport, int payload = 4)
    {
        var udp = new byte[8 + payload];
        BinaryPrimitives.WriteUInt16BigEndian(udp, sport);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(2), dport);
        BinaryPrimitives.WriteUInt16BigEndian(udp.AsSpan(4), (ushort)udp.Length);
        return udp;
    }

    public static byte[] SctpPacket(ushort sport, ushort dport)
    {
        var sctp = new byte[12];
        BinaryPrimitives.WriteUInt16BigEndian(sctp, sport);
        BinaryPrimitives.WriteUInt16BigEndian(sctp.AsSpan(2), dport);
        return sctp;
    }

    public static byte[] IcmpMessage(byte type, byte code, ushort id = 0x1234, ushort seq = 1, ReadOnlySpan<byte> body = default)
    {
        var icmp = new byte[8 + body.Length];
        icmp[0] = type;
        icmp[1] = code;
        BinaryPrimitives.WriteUInt16BigEndian(icmp.AsSpan(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(icmp.AsSpan(6), seq);
        body.CopyTo(icmp.AsSpan(8));
        return icmp;
    }

    /// <summary>An ICMP error (e.g. type 3 code 4, or ICMPv6 2) carrying the start of <paramref name="original"/> (an IP packet).</summary>
    public static byte[] IcmpError(byte type, byte code, byte[] original) =>
        IcmpMessage(type, code, 0, 0, original.AsSpan(0, Math.Min(original.Length, (original[0] >> 4) == 4 ? 28 : 48)));

    public static byte[] Frame(IPAddress source, IPAddress destination, byte protocol, ReadOnlySpan<byte> l4) =>
        source.AddressFamily == AddressFamily.InterNetwork
            ? Ethernet(0x0800, IPv4Packet(source, destination, protocol, l4))
            : Ethernet(0x86DD, IPv6Packet(source, destination, protocol, l4));

    /// <summary>An ARP request or reply for IPv4 over Ethernet.</summary>
    public static byte[] Arp(IPAddress sender, IPAddress target, ushort operation = 1)
    {
        var arp = new byte[28];
        BinaryPrimitives.WriteUInt16BigEndian(arp, 1);
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(2), 0x0800);
        arp[4] = 6;
        arp[5] = 4;
        BinaryPrimitives.WriteUInt16BigEndian(arp.AsSpan(6), operation);
        arp[8] = 0x02;
        sender.GetAddressBytes().CopyTo(arp, 14);
        target.GetAddressBytes().CopyTo(arp, 24);
        return Ethernet(0x0806, arp);
    }

    /// <summary>The frame with one or more 802.1Q tags (VLAN <paramref name="vlan"/>) in front of its EtherType.</summary>
    public static byte[] Tagged(byte[] frame, int tags = 1, ushort vlan = 0)
    {
        var tagged = new byte[frame.Length + 4 * tags];
        frame.AsSpan(0, 12).CopyTo(tagged);
        for (var i = 0; i < tags; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(tagged.AsSpan(12 + 4 * i), 0x8100);
            BinaryPrimitives.WriteUInt16BigEndian(tagged.AsSpan(14 + 4 * i), vlan);
        }
        frame.AsSpan(12).CopyTo(tagged.AsSpan(12 + 4 * tags));
        return tagged;
    }

    /// <summary>The frame with its IPv6 hop limit or IPv4 TTL set (255 marks on-link neighbour discovery).</summary>
    public static byte[] HopLimit(byte[] frame, byte hops)
    {
        var copy = (byte[])frame.Clone();
        copy[(copy[14] >> 4) == 6 ? 14 + 7 : 14 + 8] = hops;
        return copy;
    }

    public static byte[] V4(byte[] ip) => Ethernet(0x0800, ip);

    public static byte[] V6(byte[] ip) => Ethernet(0x86DD, ip);
}
