using System.CommandLine;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.Json;
using Membrane.Api;
using Membrane.Cli.Output;
using static Membrane.Cli.Commands.LocalProcesses;

namespace Membrane.Cli.Commands;

/// <summary>
/// <c>membrane cluster up|down|status</c>: a local cluster on this machine (a three-member etcd on loopback ports and N
/// simulated nodes, each an agent with its own sandbox, joined by an underlay), and <c>membrane node list</c>.
/// </summary>
public static class ClusterCommands
{
    public const string DefaultDirectory = "/var/lib/membrane/cluster";
    public const string UnderlayNamespace = "membrane-underlay";
    private const int MaxNodes = 50;

    /// <summary>The local cluster's file: <c>$MEMBRANE_CLUSTER_DIR/cluster.json</c>, else the default directory's.</summary>
    public static string FilePath(string? directory = null) =>
        Path.Combine(directory ?? (Environment.GetEnvironmentVariable("MEMBRANE_CLUSTER_DIR") is { Length: > 0 } d ? d : DefaultDirectory),
            "cluster.json");

    public static LocalClusterFile? Load(string? directory = null)
    {
        var file = FilePath(directory);
        if (!File.Exists(file))
        {
            return null;
        }
        try
        {
            return JsonSerializer.Deserialize(File.ReadAllText(file), AgentJsonContext.Default.LocalClusterFile);
        }
        catch (JsonException e)
        {
            throw new CliException($"{file} is not a cluster file ({e.Message}); remove it with 'membrane cluster down'");
        }
    }

    /// <summary>The socket of a node of the local cluster (<c>--node NAME</c>).</summary>
    public static string SocketOf(string node)
    {
        var cluster = Load() ?? throw new CliException($"--node {node}: no local cluster ({FilePath()}); start one with 'membrane " +
            "cluster up', or set MEMBRANE_SOCKET to the node's agent socket");
        return cluster.Nodes.FirstOrDefault(n => n.Name == node)?.Socket ?? throw new CliException($"--node {node}: the local cluster " +
            $"has no such node (it has {string.Join(", ", cluster.Nodes.Select(n => n.Name))})");
    }

    public static Command Create(CliOutput output)
    {
        var cluster = new Command("cluster", "A local cluster on this machine: etcd and simulated nodes, each with its own agent");
        cluster.Subcommands.Add(Up(output));
        cluster.Subcommands.Add(Down(output));
        cluster.Subcommands.Add(Status(output));
        return cluster;
    }

    private static Option<string> DirectoryOption() => new("--dir")
    {
        Description = "Where the cluster keeps etcd's data, the nodes' state and cluster.json",
        DefaultValueFactory = _ => Path.GetDirectoryName(FilePath())!,
    };

    private static Command Up(CliOutput output)
    {
        var nodes = new Option<int>("--nodes") { Description = "How many nodes (1 to 50)", DefaultValueFactory = _ => 3 };
        var routing = new Option<string>("--routing-mode")
        {
            Description = "How pods on different nodes reach each other: native or tunnel (VXLAN)",
            DefaultValueFactory = _ => "native",
        };
        routing.OneOf("native", "tunnel");
        var hostRouting = new Option<string>("--host-routing")
        {
            Description = "The agents' --host-routing: bpf (pods' hooks deliver, across nodes too, in both routing modes) or legacy",
            DefaultValueFactory = _ => "bpf",
        }.OneOf("bpf", "legacy");
        var lease = new Option<int>("--lease-ttl")
        {
            Description = "Seconds a node's keys outlive its killed agent (the agents' --lease-ttl)",
            DefaultValueFactory = _ => 15,
        };
        var dir = DirectoryOption();
        var command = new Command("up", "Start a local cluster: 3-member etcd on loopback, an agent per node (text only, no -o json)")
        {
            nodes, routing, hostRouting, lease, dir,
        };
        command.SetAction(parse =>
        {
            var count = parse.GetValue(nodes);
            if (count is < 1 or > MaxNodes)
            {
                throw new CliException($"--nodes {count}: give 1 to {MaxNodes}");
            }
            var directory = Path.GetFullPath(parse.GetValue(dir)!);
            if (Load(directory) is { } running)
            {
                throw new CliException($"a local cluster is already up ({FilePath(directory)}, {running.Nodes.Count} nodes); " +
                    "'membrane cluster down' first");
            }
            SafeFiles.EnsurePrivateDirectory(directory);
            var file = Start(directory, count, (parse.GetValue(routing)!, parse.GetValue(hostRouting)!), parse.GetValue(lease), output);
            output.Out.WriteLine($"cluster up: {file.Nodes.Count} nodes ({file.RoutingMode} routing), etcd {file.EtcdUrls}");
            Table.Write(output.Out, ["NODE", "SOCKET", "UNDERLAY", "POD RANGES"],
                file.Nodes.Select(n => (IReadOnlyList<string>)[n.Name, n.Socket, n.UnderlayAddress, $"{n.PodIPv4Range} {n.PodIPv6Range}"]));
            output.Out.WriteLine("Reach a node with 'membrane --node NAME …' or MEMBRANE_SOCKET=SOCKET.");
            return CliApp.Success;
        });
        return command;
    }

    private static LocalClusterFile Start(string directory, int count, (string Mode, string Host) routing, int leaseSeconds,
        CliOutput output)
    {
        var ports = ReservePorts(6).Chunk(2).Select(p => (Client: p[0], Peer: p[1])).ToList();
        var initial = string.Join(",", ports.Select((p, i) => $"etcd-{i + 1}=https://127.0.0.1:{p.Peer}"));
        var members = new List<LocalEtcdMember>();
        var file = new LocalClusterFile(directory, routing.Mode, UnderlayNamespace, members, []);
        try
        {
            // etcd speaks TLS only and serves only clients with a certificate of the cluster's own CA.
            LocalPki.Create(directory, Enumerable.Range(1, count).Select(i => $"node-{i}"));
            var (certificate, key, ca) = (LocalPki.Certificate(directory, "etcd"), LocalPki.Key(directory, "etcd"), LocalPki.Ca(directory));
            string[] tls = ["--cert-file", certificate, "--key-file", key, "--trusted-ca-file", ca, "--client-cert-auth",
                "--peer-cert-file", certificate, "--peer-key-file", key, "--peer-trusted-ca-file", ca, "--peer-client-cert-auth"];
            for (var i = 0; i < 3; i++)
            {
                var name = $"etcd-{i + 1}";
                var data = Path.Combine(directory, name);
                var pid = Spawn("etcd", ["--name", name, "--data-dir", data, "--listen-client-urls", $"https://127.0.0.1:{ports[i].Client}",
                    "--advertise-client-urls", $"https://127.0.0.1:{ports[i].Client}", "--listen-peer-urls",
                    $"https://127.0.0.1:{ports[i].Peer}", "--initial-advertise-peer-urls", $"https://127.0.0.1:{ports[i].Peer}",
                    "--initial-cluster", initial, "--initial-cluster-state", "new", "--initial-cluster-token", directory,
                    "--heartbeat-interval", "100", "--election-timeout", "1000", .. tls], Path.Combine(directory, $"{name}.log"));
                members.Add(new LocalEtcdMember(name, $"https://127.0.0.1:{ports[i].Client}", $"https://127.0.0.1:{ports[i].Peer}", data,
                    pid));
                Save(file);
            }
            var formed = Poll(() => members.All(m => LocalStore.Healthy(directory, m.ClientUrl)) || members.Any(m => !Alive(m.Pid)),
                TimeSpan.FromSeconds(30));
            if (members.FirstOrDefault(m => !Alive(m.Pid)) is { } exited)
            {
                throw new CliException($"etcd member {exited.Name} exited: {Tail(Path.Combine(directory, $"{exited.Name}.log"))}");
            }
            if (!formed)
            {
                throw new CliException($"etcd did not become healthy within 30 s (logs in {directory}/etcd-*.log)");
            }
            LocalStore.EnableAccessControl(directory, file.EtcdUrls, count);
            var (agent, prefix) = AgentLauncher.Locate();
            for (var i = 1; i <= count; i++)
            {
                var node = new LocalClusterNode($"node-{i}", AgentDefaults.SocketPath(Path.Combine(directory, $"node-{i}")),
                    Path.Combine(directory, $"node-{i}"), $"mbc{i}", $"/sys/fs/bpf/membrane-cluster/node-{i}", 0, $"10.250.0.{i}/24",
                    $"10.{100 + i}.0.0/16", $"fd00:{100 + i}::/64");
                var pid = Spawn(agent, [.. prefix, "--node", node.Name, "--etcd", file.EtcdUrls, "--state-dir", node.StateDirectory,
                    "--name-prefix", node.NamePrefix, "--pin-dir", node.PinDirectory, "--pod-ipv4-range", node.PodIPv4Range,
                    "--pod-ipv6-range", node.PodIPv6Range, "--underlay-address", node.UnderlayAddress,
                    "--underlay-netns", UnderlayNamespace, "--routing-mode", routing.Mode, "--host-routing", routing.Host,
                    "--lease-ttl", $"{leaseSeconds}", "--metrics-address", $"127.0.0.1:{9962 + i}", "--etcd-ca", LocalPki.Ca(directory),
                    "--etcd-cert", LocalPki.Certificate(directory, node.Name), "--etcd-key", LocalPki.Key(directory, node.Name)],
                    Path.Combine(directory, $"{node.Name}.log"));
                file = file with { Nodes = [.. file.Nodes, node with { Pid = pid }] };
                Save(file);
            }
            foreach (var node in file.Nodes)
            {
                if (!Poll(() => Answers(node) || !Alive(node.Pid), TimeSpan.FromSeconds(60)) || !Alive(node.Pid))
                {
                    throw new CliException($"{node.Name}'s agent did not start: {Tail(Path.Combine(directory, $"{node.Name}.log"))}");
                }
            }
            return file;
        }
        catch (Exception e) when (e is CliException or IOException or UnauthorizedAccessException
                                   or System.ComponentModel.Win32Exception or InvalidOperationException)
        {
            output.Err.WriteLine("cluster up failed; removing what was started");
            Stop(file, output);
            throw e is CliException ? e : new CliException($"cluster up failed: {e.Message}");
        }
    }

    private static Command Down(CliOutput output)
    {
        var dir = DirectoryOption();
        var command = new Command("down", "Stop the cluster's agents and etcd, remove all they made (text only, no -o json)") { dir };
        command.SetAction(parse =>
        {
            var directory = Path.GetFullPath(parse.GetValue(dir)!);
            var file = Load(directory);
            if (file is null)
            {
                output.Out.WriteLine($"no local cluster in {directory}");
                return CliApp.Success;
            }
            Stop(file, output);
            output.Out.WriteLine($"cluster down: {file.Nodes.Count} nodes and {file.Etcd.Count} etcd members stopped, {directory} removed");
            return CliApp.Success;
        });
        return command;
    }

    /// <summary>Stops agents (SIGTERM, then SIGKILL), cleans each node, stops etcd and removes the directory.</summary>
    private static void Stop(LocalClusterFile file, CliOutput output)
    {
        foreach (var node in file.Nodes)
        {
            Terminate(node.Pid);
        }
        if (file.Nodes.Count > 0)
        {
            try
            {
                var (agent, prefix) = AgentLauncher.Locate();
                foreach (var node in file.Nodes)
                {
                    var result = Run(agent, [.. prefix, "cleanup", "--name-prefix", node.NamePrefix, "--pin-dir", node.PinDirectory,
                        "--state-dir", node.StateDirectory, "--underlay-netns", file.UnderlayNamespace]);
                    if (result.Code != 0)
                    {
                        output.Err.WriteLine($"warning: cleaning {node.Name} failed: {result.Error.Trim()}");
                    }
                }
            }
            catch (CliException e)
            {
                // Without the agent nothing can clean the nodes' interfaces and pins; etcd and the directory still go.
                output.Err.WriteLine($"warning: the nodes' interfaces and pins were not cleaned: {e.Message}");
            }
        }
        foreach (var member in file.Etcd)
        {
            Terminate(member.Pid);
        }
        if (Directory.Exists("/sys/fs/bpf/membrane-cluster") && !Directory.EnumerateFileSystemEntries("/sys/fs/bpf/membrane-cluster").Any())
        {
            Directory.Delete("/sys/fs/bpf/membrane-cluster");
        }
        if (Directory.Exists(file.Directory))
        {
            Directory.Delete(file.Directory, recursive: true);
        }
    }

    private static Command Status(CliOutput output)
    {
        var dir = DirectoryOption();
        var format = CliOutput.CreateFormatOption();
        var command = new Command("status", "The local cluster's etcd members and nodes, and what each node's agent reports")
        {
            dir, format,
        };
        command.SetAction(async parse =>
        {
            var directory = Path.GetFullPath(parse.GetValue(dir)!);
            var file = Load(directory) ?? throw new CliException($"no local cluster in {directory}; start one with 'membrane cluster up'");
            var nodes = new List<LocalNodeStatus>();
            foreach (var node in file.Nodes)
            {
                nodes.Add(await NodeStatus(node).ConfigureAwait(false));
            }
            var status = new LocalClusterStatus(file.Directory, file.RoutingMode,
                [.. file.Etcd.Select(m => new LocalEtcdMemberStatus(m.Name, m.ClientUrl, m.Pid, Alive(m.Pid),
                    LocalStore.Healthy(file.Directory, m.ClientUrl)))],
                nodes);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(status, AgentJsonContext.Default.LocalClusterStatus));
            }
            else
            {
                output.Out.WriteLine($"cluster in {status.Directory}, {status.RoutingMode} routing");
                Table.Write(output.Out, ["ETCD", "URL", "PID", "HEALTHY"], status.Etcd.Select(m => (IReadOnlyList<string>)[m.Name,
                    m.ClientUrl,
                    m.Running ? $"{m.Pid}" : "stopped", m.Healthy ? "yes" : "no"]));
                output.Out.WriteLine();
                Table.Write(output.Out, ["NODE", "AGENT", "HEALTH", "REVISION", "PODS", "REMOTE ADDRESSES", "SOCKET"],
                    status.Nodes.Select(n =>
                    (IReadOnlyList<string>)[n.Name, n.Running ? $"{n.Pid}" : "stopped", n.Health, $"{n.EnforcedRevision}", $"{n.Endpoints}",
                        $"{n.RemoteEndpoints}", n.Socket]));
                foreach (var node in status.Nodes)
                {
                    foreach (var reason in node.Reasons)
                    {
                        output.Out.WriteLine($"{node.Name}: {reason}");
                    }
                }
            }
            return status.Nodes.All(n => n.Health == "ok") && status.Etcd.All(m => m.Healthy) ? CliApp.Success : CliApp.Failure;
        });
        return command;
    }

    private static async Task<LocalNodeStatus> NodeStatus(LocalClusterNode node)
    {
        if (!Alive(node.Pid))
        {
            return new LocalNodeStatus(node.Name, node.Socket, node.Pid, false, "down", ["the agent is not running"], 0, 0, 0);
        }
        try
        {
            using var client = new AgentClient(node.Socket);
            var s = await client.Get("v1/status", AgentJsonContext.Default.StatusResponse).ConfigureAwait(false);
            return new LocalNodeStatus(node.Name, node.Socket, node.Pid, true, s.Cluster?.Health ?? "unknown", s.Cluster?.Reasons ?? [],
                s.Cluster?.EnforcedRevision ?? s.Revision, s.Endpoints, s.Cluster?.RemoteEndpoints ?? 0);
        }
        catch (Exception e) when (e is HttpRequestException or IOException or SocketException or AgentRequestException)
        {
            return new LocalNodeStatus(node.Name, node.Socket, node.Pid, true, "unreachable", [e.Message], 0, 0, 0);
        }
    }

    /// <summary><c>membrane node list</c>: the nodes the store announces, as the agent reached sees them.</summary>
    public static Command Nodes(CliOutput output)
    {
        var node = new Command("node", "The cluster's nodes");
        var format = CliOutput.CreateFormatOption();
        var list = new Command("list", "List the nodes announced in the cluster store") { format };
        list.SetAction(async parse =>
        {
            using var client = AgentClient.FromEnvironment();
            var s = await client.Get("v1/status", AgentJsonContext.Default.StatusResponse).ConfigureAwait(false);
            var nodes = s.Cluster?.Nodes.ToList() ?? throw new CliException("this agent runs alone (no --etcd): there is one node");
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(JsonSerializer.Serialize(nodes, AgentJsonContext.Default.ListNodeOutput));
                return CliApp.Success;
            }
            Table.Write(output.Out, ["NAME", "ADDRESS", "POD RANGES"], nodes.Select(n => (IReadOnlyList<string>)[n.Name == s.Cluster.Node
                ? $"{n.Name} (this node)" : n.Name, n.Address, string.Join(" ", n.PodRanges)]));
            return CliApp.Success;
        });
        node.Subcommands.Add(list);
        return node;
    }

    private static bool Answers(LocalClusterNode node)
    {
        if (!File.Exists(node.Socket))
        {
            return false;
        }
        try
        {
            using var client = new AgentClient(node.Socket);
            client.Get("v1/status", AgentJsonContext.Default.StatusResponse).GetAwaiter().GetResult();
            return true;
        }
        catch (Exception e) when (e is HttpRequestException or IOException or SocketException or AgentRequestException)
        {
            return false;
        }
    }

    private static string Tail(string log) =>
        File.Exists(log) ? string.Join(" / ", File.ReadAllLines(log).TakeLast(3)) : "no log";

    /// <summary>cluster.json names the store and the certificates: root's alone (0600, written exclusively, then renamed).</summary>
    private static void Save(LocalClusterFile file)
    {
        var path = Path.Combine(file.Directory, "cluster.json");
        using (var stream = SafeFiles.CreateExclusive(path + ".tmp"))
        {
            JsonSerializer.Serialize(stream, file, AgentJsonContext.Default.LocalClusterFile);
        }
        File.Move(path + ".tmp", path, overwrite: true);
    }
}
