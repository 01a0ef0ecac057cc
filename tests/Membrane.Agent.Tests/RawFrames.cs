using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Datapath.Tests;

namespace Membrane.Agent.Tests;

/// <summary>
/// What a hostile pod can do with CAP_NET_RAW: hand-built frames sent on its eth0 (AF_PACKET), and a capture in
/// another pod's namespace that tells whether such a frame arrived there. Frames carry a marker so the capture
/// recognises them among the pods' other traffic.
/// </summary>
internal static class RawFrames
{
    private const ushort EthPAll = 0x0003;

    /// <summary>An AF_PACKET address: family, protocol (network order) and interface index.</summary>
    private sealed class LinkLayerEndPoint(int ifIndex, ushort protocol) : EndPoint
    {
        public override AddressFamily AddressFamily => AddressFamily.Packet;

        public override SocketAddress Serialize()
        {
            var address = new SocketAddress(AddressFamily.Packet, 20);
            var bytes = new byte[6];
            BinaryPrimitives.WriteUInt16BigEndian(bytes, protocol);
            BinaryPrimitives.WriteInt32LittleEndian(bytes.AsSpan(2), ifIndex);
            for (var i = 0; i < bytes.Length; i++)
            {
                address[2 + i] = bytes[i];
            }
            return address;
        }
    }

    public static byte[] NewMarker() => Guid.NewGuid().ToByteArray();

    /// <summary>Interface index and MAC address of a device in a namespace.</summary>
    public static (int IfIndex, byte[] Mac) Link(string netns, string device)
    {
        using var doc = JsonDocument.Parse(Ip.Run("-n", netns, "-j", "link", "show", "dev", device));
        var link = doc.RootElement[0];
        var mac = link.GetProperty("address").GetString()!.Split(':').Select(b => Convert.ToByte(b, 16)).ToArray();
        return (link.GetProperty("ifindex").GetInt32(), mac);
    }

    /// <summary>Sends a whole Ethernet frame out of the pod's eth0, as the pod.</summary>
    public static void Send(string podNetns, byte[] frame)
    {
        var (ifIndex, _) = Link(podNetns, "eth0");
        using var socket = NetworkNamespace.Run(podNetns, () => new Socket(AddressFamily.Packet, SocketType.Raw, ProtocolType.Unspecified));
        socket.SendTo(frame, new LinkLayerEndPoint(ifIndex, 0));
    }

    /// <summary>Starts capturing on the pod's eth0; <see cref="Capture.Saw"/> tells whether a frame with the marker arrived.</summary>
    public static Capture Listen(string podNetns)
    {
        var (ifIndex, _) = Link(podNetns, "eth0");
        var socket = NetworkNamespace.Run(podNetns, () => new Socket(AddressFamily.Packet, SocketType.Raw,
            (ProtocolType)BinaryPrimitives.ReverseEndianness(EthPAll)));
        socket.Bind(new LinkLayerEndPoint(ifIndex, EthPAll));
        return new Capture(socket);
    }

    internal sealed class Capture(Socket socket) : IDisposable
    {
        /// <summary>True as soon as a frame containing <paramref name="marker"/> arrives; false after the deadline.</summary>
        public bool Saw(byte[] marker, int timeoutMs = 1500)
        {
            var buffer = new byte[65536];
            var watch = Stopwatch.StartNew();
            while (watch.ElapsedMilliseconds < timeoutMs)
            {
                socket.ReceiveTimeout = Math.Max(1, timeoutMs - (int)watch.ElapsedMilliseconds);
                int n;
                try
                {
                    n = socket.Receive(buffer);
                }
                catch (SocketException)
                {
                    return false;
                }
                if (buffer.AsSpan(0, n).IndexOf(marker) >= 0)
                {
                    return true;
                }
            }
            return false;
        }

        public void Dispose() => socket.Dispose();
    }

    // ---- building frames ----

    public static byte[] Ethernet(byte[] destination, byte[] source, ushort etherType, ReadOnlySpan<byte> payload)
    {
        var frame = new byte[14 + payload.Length];
        destination.CopyTo(frame, 0);
        source.CopyTo(frame, 6);
        BinaryPrimitives.WriteUInt16BigEndian(frame.AsSpan(12), etherType);
        payload.CopyTo(frame.AsSpan(14));
        return frame;
    }

    /// <summary>The frame with <paramref name="tags"/> 802.1Q tags of VLAN 0 in front of its EtherType.</summary>
    public static byte[] Tagged(byte[] frame, int tags)
    {
        var tagged = new byte[frame.Length + 4 * tags];
        frame.AsSpan(0, 12).CopyTo(tagged);
        for (var i = 0; i < tags; i++)
        {
            BinaryPrimitives.WriteUInt16BigEndian(tagged.AsSpan(12 + 4 * i), 0x8100);
        }
        frame.AsSpan(12).CopyTo(tagged.AsSpan(12 + 4 * tags));
        return tagged;
    }

    /// <summary>An IP packet (IPv4 with a valid header checksum, which forwarding checks; or IPv6).</summary>
    public static byte[] IpPacket(IPAddress source, IPAddress destination, byte protocol, ReadOnlySpan<byte> l4, byte hops = 64)
    {
        if (source.AddressFamily == AddressFamily.InterNetwork)
        {
            var ip = new byte[20 + l4.Length];
            ip[0] = 0x45;
            BinaryPrimitives.WriteUInt16BigEndian(ip.AsSpan(2), (ushort)ip.Length);
            ip[8] = hops;
            ip[9] = protocol;
            source.GetAddressBytes().CopyTo(ip, 12);
            destination.GetAddressBytes().CopyTo(ip, 16);
            BinaryPrimitives.WriteUInt16BigEndian(ip.AsSpan(10), InternetChecksum.Of(ip.AsSpan(0, 20)));
            l4.CopyTo(ip.AsSpan(20));
            return ip;
        }
        var ip6 = new byte[40 + l4.Length];
        ip6[0] = 0x60;
        BinaryPrimitives.WriteUInt16BigEndian(ip6.AsSpan(4), (ushort)l4.Length);
        ip6[6] = protocol;
        ip6[7] = hops;
        source.GetAddressBytes().CopyTo(ip6, 8);
        destination.GetAddressBytes().CopyTo(ip6, 24);
        l4.CopyTo(ip6.AsSpan(40));
        return ip6;
    }

    public static byte[] TcpSyn(ushort sourcePort, ushort destinationPort, ReadOnlySpan<byte> payload)
    {
        var tcp = new byte[20 + payload.Length];
        BinaryPrimitives.WriteUInt16BigEndian(tcp, sourcePort);
        BinaryPrimitives.WriteUInt16BigEndian(tcp.AsSpan(2), destinationPort);
        BinaryPrimitives.WriteUInt32BigEndian(tcp.AsSpan(4), 1000);
        tcp[12] = 5 << 4;
        tcp[13] = 0x02;
        BinaryPrimitives.WriteUInt16BigEndian(tcp.AsSpan(14), 64240);
        payload.CopyTo(tcp.AsSpan(20));
        return tcp;
    }

    /// <summary>An ICMP(v6) message with its IPv4 checksum (raw ICMPv6 sockets fill theirs).</summary>
    public static byte[] Icmp(byte type, byte code, ReadOnlySpan<byte> body)
    {
        var icmp = new byte[4 + body.Length];
        icmp[0] = type;
        icmp[1] = code;
        body.CopyTo(icmp.AsSpan(4));
        BinaryPrimitives.WriteUInt16BigEndian(icmp.AsSpan(2), InternetChecksum.Of(icmp));
        return icmp;
    }

}
