using System.CommandLine;
using System.Net;
using System.Net.Sockets;

namespace Membrane.Agent.Sandbox;

/// <summary>
/// <c>pod-server</c>: the sandbox's stand-in for a pod's containers, run by <see cref="PodServers"/> inside the pod's
/// namespace: echoes on every declared TCP and UDP container port.
/// </summary>
public static class PodServerProcess
{
    public static Command Command()
    {
        var instance = new Option<string>("--instance") { Required = true };
        var pod = new Option<string>("--pod") { Required = true };
        var tcp = new Option<string?>("--tcp");
        var udp = new Option<string?>("--udp");
        var command = new Command("pod-server", "Echo on a pod's container ports (runs inside the pod's namespace)") { instance, pod, tcp,
            udp };
        command.Hidden = true;
        command.SetAction(async (parse, cancel) =>
        {
            static IEnumerable<int> Ports(string? list) => (list ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse);
            var tasks = Ports(parse.GetValue(tcp)).Select(p => TcpEcho(p, cancel))
                .Concat(Ports(parse.GetValue(udp)).Select(p => UdpEcho(p, cancel))).ToList();
            await Console.Error.WriteLineAsync($"pod-server {parse.GetValue(pod)}: tcp {parse.GetValue(tcp)} udp {parse.GetValue(udp)}")
                .ConfigureAwait(false);
            await Task.WhenAll(tasks).ConfigureAwait(false);
            return 0;
        });
        return command;
    }

    private static async Task TcpEcho(int port, CancellationToken cancel)
    {
        using var listener = new Socket(AddressFamily.InterNetworkV6, SocketType.Stream, ProtocolType.Tcp) { DualMode = true };
        listener.SetSocketOption(SocketOptionLevel.Socket, SocketOptionName.ReuseAddress, true);
        listener.Bind(new IPEndPoint(IPAddress.IPv6Any, port));
        listener.Listen(128);
        while (!cancel.IsCancellationRequested)
        {
            var client = await listener.AcceptAsync(cancel).ConfigureAwait(false);
            _ = Task.Run(async () =>
            {
                using (client)
                {
                    var buffer = new byte[65536];
                    try
                    {
                        int n;
                        while ((n = await client.ReceiveAsync(buffer, cancel).ConfigureAwait(false)) > 0)
                        {
                            await client.SendAsync(buffer.AsMemory(0, n), cancel).ConfigureAwait(false);
                        }
                    }
                    catch (SocketException)
                    {
                    }
                }
            }, cancel);
        }
    }

    private static async Task UdpEcho(int port, CancellationToken cancel)
    {
        using var socket = new Socket(AddressFamily.InterNetworkV6, SocketType.Dgram, ProtocolType.Udp) { DualMode = true };
        socket.Bind(new IPEndPoint(IPAddress.IPv6Any, port));
        var buffer = new byte[65536];
        while (!cancel.IsCancellationRequested)
        {
            var r = await socket.ReceiveFromAsync(buffer, new IPEndPoint(IPAddress.IPv6Any, 0), cancel).ConfigureAwait(false);
            await socket.SendToAsync(buffer.AsMemory(0, r.ReceivedBytes), r.RemoteEndPoint, cancel).ConfigureAwait(false);
        }
    }
}
