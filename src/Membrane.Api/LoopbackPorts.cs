using System.Globalization;
using System.Net;
using System.Net.Sockets;

namespace Membrane.Api;

/// <summary>
/// Free loopback TCP ports for servers started as other processes (<c>membrane cluster up</c>'s etcd members, the
/// tests' etcd and Prometheus). A port the kernel hands out for an ephemeral bind can be taken again, as the source
/// port of any outgoing connection, between the choice and the server's bind; these are chosen below the ephemeral
/// range instead, and every listener is held until all are chosen, so the ports are distinct.
/// </summary>
public static class LoopbackPorts
{
    private const int Lowest = 10_000;

    public static int[] Reserve(int count)
    {
        var below = EphemeralLow();
        var held = new List<TcpListener>();
        try
        {
            for (var attempt = 0; held.Count < count; attempt++)
            {
                if (attempt > 10_000)
                {
                    throw new InvalidOperationException($"no {count} free loopback ports in {Lowest}-{below - 1}");
                }
                var listener = new TcpListener(IPAddress.Loopback, Random.Shared.Next(Lowest, below));
                try
                {
                    listener.Start();
                    held.Add(listener);
                }
                catch (SocketException)
                {
                    listener.Dispose();
                }
            }
            return [.. held.Select(l => ((IPEndPoint)l.LocalEndpoint).Port)];
        }
        finally
        {
            foreach (var listener in held)
            {
                listener.Dispose();
            }
        }
    }

    private static int EphemeralLow()
    {
        try
        {
            var range = File.ReadAllText("/proc/sys/net/ipv4/ip_local_port_range");
            var low = int.Parse(range.Split('\t', ' ')[0], CultureInfo.InvariantCulture);
            return low > Lowest + 1_000 ? low : 32_768;
        }
        catch (IOException)
        {
            return 32_768;
        }
    }
}
