using System.Diagnostics;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Agent.Sandbox;

/// <summary>
/// One small server process per pod, inside the pod's namespace, echoing on every declared container port (TCP
/// and UDP; SCTP is absent from this kernel). Separate processes, so pods keep answering while the agent restarts.
/// </summary>
public sealed class PodServers(AgentOptions options)
{
    /// <summary>
    /// How to run the agent's executable: its apphost when this process is it, else <c>dotnet membrane-agent.dll</c>
    /// from beside this assembly (the benchmarks host the agent in their own process).
    /// </summary>
    public static (string File, string[] Prefix) SelfCommand()
    {
        var process = Environment.ProcessPath ?? "dotnet";
        if (Path.GetFileName(process) == "membrane-agent")
        {
            return (process, []);
        }
        var dll = Path.Combine(AppContext.BaseDirectory, "membrane-agent.dll");
        if (!File.Exists(dll))
        {
            throw new InvalidOperationException($"cannot start pod servers: {dll} not found");
        }
        return (Path.GetFileNameWithoutExtension(process) == "dotnet" ? process : "dotnet", [dll]);
    }

    public void Start(PodManifest pod, string netns)
    {
        ArgumentNullException.ThrowIfNull(pod);
        Stop(pod.Key);
        var tcp = pod.Ports.Where(p => p.Protocol == PortProtocol.Tcp).Select(p => p.Port).Distinct().ToList();
        var udp = pod.Ports.Where(p => p.Protocol == PortProtocol.Udp).Select(p => p.Port).Distinct().ToList();
        if (tcp.Count == 0 && udp.Count == 0)
        {
            return;
        }
        var (file, prefix) = SelfCommand();
        var log = Path.Combine(options.StateDirectory, "logs", $"{PodNetwork.Hash(pod.Key)}.log");
        State.StateStore.EnsurePrivateDirectory(Path.GetDirectoryName(log)!); // pod output is root's only
        var command = new List<string> { "ip", "netns", "exec", netns, file };
        command.AddRange(prefix);
        command.AddRange(["pod-server", "--instance", options.NamePrefix, "--pod", pod.Key]);
        if (tcp.Count > 0)
        {
            command.AddRange(["--tcp", string.Join(',', tcp)]);
        }
        if (udp.Count > 0)
        {
            command.AddRange(["--udp", string.Join(',', udp)]);
        }
        // setsid: its own session, so a Ctrl-C or kill of the agent's group leaves the pod running.
        var shell = $"exec setsid {string.Join(' ', command.Select(Quote))} </dev/null >>{Quote(log)} 2>&1 &";
        using var process = Process.Start(new ProcessStartInfo("/bin/sh", ["-c", shell]) { UseShellExecute = false })!;
        process.WaitForExit();
        WaitForListeners(netns, tcp);
    }

    public void Stop(string podKey)
    {
        foreach (var pid in Find(podKey))
        {
            try
            {
                using var p = Process.GetProcessById(pid);
                p.Kill();
                p.WaitForExit(2000);
            }
            catch (ArgumentException)
            {
            }
            catch (InvalidOperationException)
            {
            }
        }
    }

    public bool IsRunning(string podKey) => Find(podKey).Count > 0;

    /// <summary>Server processes of this instance for a pod (or all pods when null), found by their command line.</summary>
    public List<int> Find(string? podKey)
    {
        var result = new List<int>();
        foreach (var dir in Directory.EnumerateDirectories("/proc"))
        {
            if (!int.TryParse(Path.GetFileName(dir), out var pid))
            {
                continue;
            }
            string[] args;
            try
            {
                args = File.ReadAllText(Path.Combine(dir, "cmdline")).Split('\0');
            }
            catch (IOException)
            {
                continue;
            }
            catch (UnauthorizedAccessException)
            {
                continue;
            }
            var i = Array.IndexOf(args, "pod-server");
            if (i < 0 || args.ElementAtOrDefault(Array.IndexOf(args, "--instance") + 1) != options.NamePrefix
                || args[0] is "ip" or "/bin/sh" or "setsid")
            {
                continue;
            }
            if (podKey is null || args.ElementAtOrDefault(Array.IndexOf(args, "--pod") + 1) == podKey)
            {
                result.Add(pid);
            }
        }
        return result;
    }

    private static void WaitForListeners(string netns, List<int> tcpPorts)
    {
        // The server is up when its TCP ports accept connections (UDP has no handshake; it binds first).
        var deadline = Stopwatch.StartNew();
        foreach (var port in tcpPorts)
        {
            while (deadline.Elapsed < TimeSpan.FromSeconds(10))
            {
                var listening = NetworkNamespace.Run(netns, () =>
                {
                    using var s = new System.Net.Sockets.Socket(System.Net.Sockets.SocketType.Stream, System.Net.Sockets.ProtocolType.Tcp);
                    try
                    {
                        s.Connect(System.Net.IPAddress.IPv6Loopback, port);
                        return true;
                    }
                    catch (System.Net.Sockets.SocketException)
                    {
                        return false;
                    }
                });
                if (listening)
                {
                    break;
                }
                Thread.Sleep(50);
            }
        }
    }

    private static string Quote(string s) => "'" + s.Replace("'", "'\\''", StringComparison.Ordinal) + "'";
}
