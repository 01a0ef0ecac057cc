using System.CommandLine;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent;
using Membrane.Agent.Sandbox;

namespace Membrane.Cli.Commands;

/// <summary>Commands the sandbox runs itself (the pod server) and offline clean-up.</summary>
public static class InternalCommands
{
    public static Command Create(CliOutput output)
    {
        var command = new Command("internal", "Used by the sandbox itself") { Hidden = true };
        command.Subcommands.Add(PodServer(output));
        return command;
    }

    /// <summary><c>membrane cleanup</c>: removes everything an agent of a name prefix created, with or without the agent.</summary>
    public static Command Cleanup(CliOutput output)
    {
        var defaults = new AgentOptions();
        var prefix = new Option<string>("--name-prefix") { DefaultValueFactory = _ => defaults.NamePrefix, Description = "Prefix of the sandbox's namespaces" };
        var pinDir = new Option<string>("--pin-dir") { DefaultValueFactory = _ => defaults.PinDirectory, Description = "Pinned maps to remove" };
        var stateDir = new Option<string?>("--state-dir") { Description = "Also remove this state directory" };
        var command = new Command("cleanup", "Remove the sandbox's namespaces, pod servers and pinned maps (stop the agent first)") { prefix, pinDir, stateDir };
        command.SetAction(parse =>
        {
            var name = parse.GetValue(prefix)!;
            var servers = new PodServers(new AgentOptions { NamePrefix = name });
            foreach (var pid in servers.Find(null))
            {
                try
                {
                    System.Diagnostics.Process.GetProcessById(pid).Kill();
                }
                catch (ArgumentException)
                {
                }
            }
            var removed = 0;
            foreach (var line in Ip.Run("netns", "list").Split('\n', StringSplitOptions.RemoveEmptyEntries))
            {
                var ns = line.Split(' ')[0];
                if (ns.StartsWith(name + "-", StringComparison.Ordinal))
                {
                    Ip.Run("netns", "delete", ns);
                    removed++;
                }
            }
            if (Directory.Exists(parse.GetValue(pinDir)))
            {
                Directory.Delete(parse.GetValue(pinDir)!, recursive: true);
            }
            if (parse.GetValue(stateDir) is { } dir && Directory.Exists(dir))
            {
                Directory.Delete(dir, recursive: true);
            }
            output.Out.WriteLine($"removed {removed} network namespaces of prefix \"{name}\", their pod servers and pinned maps");
            return CliApp.Success;
        });
        return command;
    }

    private static Command PodServer(CliOutput output)
    {
        var instance = new Option<string>("--instance") { Required = true };
        var pod = new Option<string>("--pod") { Required = true };
        var tcp = new Option<string?>("--tcp");
        var udp = new Option<string?>("--udp");
        var command = new Command("pod-server", "Echo on a pod's container ports (runs inside the pod's namespace)") { instance, pod, tcp, udp };
        command.SetAction(async (parse, cancel) =>
        {
            static IEnumerable<int> Ports(string? list) => (list ?? "").Split(',', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse);
            var tasks = Ports(parse.GetValue(tcp)).Select(p => TcpEcho(p, cancel))
                .Concat(Ports(parse.GetValue(udp)).Select(p => UdpEcho(p, cancel))).ToList();
            output.Err.WriteLine($"pod-server {parse.GetValue(pod)}: tcp {parse.GetValue(tcp)} udp {parse.GetValue(udp)}");
            await Task.WhenAll(tasks).ConfigureAwait(false);
            return CliApp.Success;
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
