using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Sandbox;

namespace Membrane.Agent.Tests;

/// <summary>Real traffic from inside a pod's network namespace, with the kernel's own sockets.</summary>
internal static class PodTraffic
{
    /// <summary>One ICMP echo from the pod's namespace; true when its reply (same id) comes within a second.</summary>
    public static bool Echo(string netns, IPAddress target, ushort id)
    {
        using var socket = NetworkNamespace.Run(netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp));
        socket.ReceiveTimeout = 1000;
        byte[] request = [8, 0, 0, 0, (byte)(id >> 8), (byte)id, 0, 1];
        var sum = (uint)(request[0] << 8) + (uint)(request[4] << 8 | request[5]) + 1;
        sum = (sum & 0xffff) + (sum >> 16);
        request[2] = (byte)(~sum >> 8);
        request[3] = (byte)~sum;
        socket.SendTo(request, new IPEndPoint(target, 0));
        var buffer = new byte[256];
        try
        {
            while (true)
            {
                var n = socket.Receive(buffer);
                if (n >= 28 && buffer[20] == 0 && buffer[24] == (byte)(id >> 8) && buffer[25] == (byte)id)
                {
                    return true;
                }
            }
        }
        catch (SocketException)
        {
            return false;
        }
    }

    /// <summary>True when the socket receives anything that contains the marker within 1.5 s.</summary>
    public static bool SawMarker(Socket socket, byte[] marker)
    {
        socket.ReceiveTimeout = 300;
        var buffer = new byte[4096];
        var deadline = DateTime.UtcNow.AddMilliseconds(1500);
        while (DateTime.UtcNow < deadline)
        {
            try
            {
                var n = socket.Receive(buffer);
                if (buffer.AsSpan(0, n).IndexOf(marker) >= 0)
                {
                    return true;
                }
            }
            catch (SocketException)
            {
                // the receive timeout: look again until the deadline
            }
        }
        return false;
    }

    /// <summary>A TCP connection opened from the pod's namespace (the connect runs there; the socket stays in it).</summary>
    public static Socket Connect(string netns, IPAddress target, int port)
    {
        var socket = NetworkNamespace.Run(netns, () => new Socket(target.AddressFamily, SocketType.Stream, ProtocolType.Tcp));
        socket.ReceiveTimeout = 1500;
        socket.Connect(target, port);
        return socket;
    }

    /// <summary>Sends on the connection and waits for the pod server's echo: false when nothing comes back in time.</summary>
    public static bool RoundTrip(Socket connection, ReadOnlySpan<byte> data)
    {
        connection.Send(data);
        var buffer = new byte[data.Length];
        try
        {
            var received = 0;
            while (received < buffer.Length)
            {
                var n = connection.Receive(buffer, received, buffer.Length - received, SocketFlags.None);
                if (n == 0)
                {
                    return false;
                }
                received += n;
            }
            return buffer.AsSpan().SequenceEqual(data);
        }
        catch (SocketException)
        {
            return false;
        }
    }
}
