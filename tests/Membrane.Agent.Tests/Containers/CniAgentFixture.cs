using System.Diagnostics;
using System.Text;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Agent.Tests.Containers;

/// <summary>
/// A real agent run with <c>--runtime cni</c> (own prefix, state, pins and pod ranges), the plugin installed with
/// <c>membrane cni install</c> for both modes, and podman configured to use them with a storage root of its own and
/// an image made offline from busybox-static. Everything is removed at the end and leftovers of an aborted run at
/// the start.
/// </summary>
public sealed class CniAgentFixture : IDisposable
{
    public const string Prefix = "mbcni";
    public const string Network = "membrane";
    public const string ChainedNetwork = "membrane-chained";
    public const string Image = "localhost/membrane-e2e:1";
    public static readonly string PinDirectory = $"/sys/fs/bpf/{Prefix}";
    public static string Root { get; } = Path.Combine(Path.GetTempPath(), $"{Prefix}-e2e");
    public static string StateDirectory => Path.Combine(Root, "state");
    public static string Socket => Path.Combine(StateDirectory, "membrane.sock");
    public static string BinDirectory => Path.Combine(Root, "cni-bin");
    public static string ConfDirectory => Path.Combine(Root, "cni-conf");
    private static string PodmanConf => Path.Combine(Root, "containers.conf");
    public static string ContainerdDirectory => Path.Combine(Root, "containerd");
    public static string ContainerdSocket => Path.Combine(ContainerdDirectory, "containerd.sock");
    private static string ContainerdConfDirectory => Path.Combine(Root, "containerd-cni-conf");

    /// <summary>A second containerd whose CRI uses the chained conflist (the CRI takes the first conflist it finds).</summary>
    public static string ChainedContainerdDirectory => Path.Combine(Root, "containerd-chained");
    public static string ChainedContainerdSocket => Path.Combine(ChainedContainerdDirectory, "containerd.sock");
    private readonly List<Process> _containerds = [];
    private Process? _agent;

    public CniAgentFixture()
    {
        Cleanup();
        try
        {
            Start();
        }
        catch
        {
            Cleanup(); // xunit does not dispose a fixture whose constructor failed
            throw;
        }
    }

    private void Start()
    {
        Directory.CreateDirectory(Root);
        StartContainerd(ContainerdDirectory, ContainerdConfDirectory);
        StartAgent();
        Mb("cni", "install", "--bin-dir", BinDirectory, "--conf-dir", ConfDirectory, "--agent-socket", Socket, "--network", Network);
        Mb("cni", "install", "--bin-dir", BinDirectory, "--conf-dir", ConfDirectory, "--agent-socket", Socket, "--network",
            ChainedNetwork, "--mode", "chained", "--subnet", "10.211.0.0/24", "--bridge", "mbcnibr0");
        File.WriteAllText(PodmanConf, $"""
            [containers]
            default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]
            [engine]
            runtime = "runc"
            [network]
            network_backend = "cni"
            cni_plugin_dirs = ["{BinDirectory}", "/usr/lib/cni"]
            network_config_dir = "{ConfDirectory}"
            """);
        // containerd's CRI looks for every plugin (loopback too) in its one bin_dir, as a kubelet node has them in /opt/cni/bin.
        foreach (var reference in new[] { "loopback", "bridge", "host-local" })
        {
            File.CreateSymbolicLink(Path.Combine(BinDirectory, reference), Path.Combine("/usr/lib/cni", reference));
        }
        // containerd's CRI reads the first conflist of its directory: interface mode only.
        Mb("cni", "install", "--bin-dir", BinDirectory, "--conf-dir", ContainerdConfDirectory, "--agent-socket", Socket, "--network",
            Network);
        BuildImage();
        var archive = Path.Combine(Root, "image.tar");
        Podman("save", "--format", "docker-archive", "-o", archive, Image);
        Run("ctr", "--address", ContainerdSocket, "-n", "k8s.io", "image", "import", archive);
    }

    /// <summary>Starts the chained containerd (once) with the image imported; its socket.</summary>
    public string ChainedContainerd()
    {
        if (!File.Exists(ChainedContainerdSocket))
        {
            var conf = Path.Combine(Root, "containerd-chained-cni-conf");
            Mb("cni", "install", "--bin-dir", BinDirectory, "--conf-dir", conf, "--agent-socket", Socket, "--network",
                ChainedNetwork, "--mode", "chained", "--subnet", "10.211.0.0/24", "--bridge", "mbcnibr0");
            StartContainerd(ChainedContainerdDirectory, conf);
            Run("ctr", "--address", ChainedContainerdSocket, "-n", "k8s.io", "image", "import", Path.Combine(Root, "image.tar"));
        }
        return ChainedContainerdSocket;
    }

    /// <summary>containerd with a root, state, socket and CNI directories of the test's own (no systemd here).</summary>
    private void StartContainerd(string directory, string confDirectory)
    {
        Directory.CreateDirectory(directory);
        var socket = Path.Combine(directory, "containerd.sock");
        var config = Path.Combine(directory, "config.toml");
        File.WriteAllText(config, $"""
            version = 2
            root = "{directory}/root"
            state = "{directory}/state"
            [grpc]
              address = "{socket}"
            [ttrpc]
              address = "{socket}.ttrpc"
            [plugins."io.containerd.grpc.v1.cri"]
              sandbox_image = "{Image}"
              restrict_oom_score_adj = true
              disable_apparmor = true
              stream_server_address = "127.0.0.1"
              stream_server_port = "0"
              [plugins."io.containerd.grpc.v1.cri".cni]
                bin_dir = "{BinDirectory}"
                conf_dir = "{confDirectory}"
              [plugins."io.containerd.grpc.v1.cri".containerd]
                default_runtime_name = "runc"
                [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
                  runtime_type = "io.containerd.runc.v2"
            """);
        var start = new ProcessStartInfo("containerd")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            UseShellExecute = false,
        };
        start.ArgumentList.Add("--config");
        start.ArgumentList.Add(config);
        var containerd = Process.Start(start)!;
        _containerds.Add(containerd);
        containerd.BeginErrorReadLine();
        containerd.BeginOutputReadLine();
        var deadline = Stopwatch.StartNew();
        while (Exec("ctr", ["--address", socket, "version"], []).Code != 0)
        {
            Assert.False(containerd.HasExited, "containerd exited at start");
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), "containerd did not answer within 30 s");
            Thread.Sleep(100);
        }
    }

    /// <summary>
    /// A busybox root file system as an image: no registry, a few seconds. Its command sleeps, so it also serves as
    /// containerd's sandbox (pause) image.
    /// </summary>
    private void BuildImage()
    {
        var rootfs = Path.Combine(Root, "rootfs");
        Directory.CreateDirectory(Path.Combine(rootfs, "bin"));
        File.Copy("/bin/busybox", Path.Combine(rootfs, "bin", "busybox"), overwrite: true);
        foreach (var applet in new[] { "sh", "ping", "ping6", "nc", "sleep", "ip", "cat", "echo", "true" })
        {
            File.CreateSymbolicLink(Path.Combine(rootfs, "bin", applet), "busybox");
        }
        var tar = Path.Combine(Root, "rootfs.tar");
        Run("tar", "-C", rootfs, "-cf", tar, ".");
        Podman("import", "--change", "ENV PATH=/bin", "--change", "CMD [\"/bin/sleep\", \"2147483647\"]", tar, Image);
    }

    public void StartAgent()
    {
        var (agent, code, stderr) = AgentUnderTest.Start(["--runtime", "cni", "--state-dir", StateDirectory, "--name-prefix", Prefix,
            "--pin-dir", PinDirectory, "--pod-ipv4-range", "10.201.0.0/16", "--pod-ipv6-range", "fd00:201::/64", "--cri-socket",
            ContainerdSocket], () => File.Exists(Socket) && Cli("status").Code == 0);
        _agent = agent ?? throw new InvalidOperationException($"the agent exited with {code}: {stderr}");
    }

    /// <summary>kill -9, as after a crash.</summary>
    public void KillAgent()
    {
        _agent!.Kill();
        _agent.WaitForExit();
    }

    public static (int Code, string Out, string Err) Cli(params string[] args) =>
        Exec("dotnet", [Path.Combine(AppContext.BaseDirectory, "membrane.dll"), .. args],
            new() { ["MEMBRANE_SOCKET"] = Socket, ["MEMBRANE_CNI"] = PluginBuild });

    /// <summary>The plugin as <c>dotnet build</c> left it in the source tree (what <c>membrane cni install</c> copies).</summary>
    private static string PluginBuild
    {
        get
        {
            var directory = new DirectoryInfo(AppContext.BaseDirectory);
            while (directory is not null && !File.Exists(Path.Combine(directory.FullName, "Membrane.slnx")))
            {
                directory = directory.Parent;
            }
            var framework = new DirectoryInfo(AppContext.BaseDirectory).Name;
            var configuration = new DirectoryInfo(AppContext.BaseDirectory).Parent!.Name;
            return Path.Combine(directory?.FullName ?? "/nonexistent", "src", "Membrane.Cni", "bin", configuration, framework,
                "membrane-cni");
        }
    }

    public static string Mb(params string[] args)
    {
        var r = Cli(args);
        Assert.True(r.Code == 0, $"membrane {string.Join(' ', args)} exited {r.Code}: {r.Out}{r.Err}");
        return r.Out;
    }

    public static (int Code, string Out, string Err) TryPodman(params string[] args) =>
        Exec("podman", ["--root", Path.Combine(Root, "podman-root"), "--runroot", Path.Combine(Root, "podman-run"), .. args],
            new() { ["CONTAINERS_CONF"] = PodmanConf });

    public static string Podman(params string[] args)
    {
        var r = TryPodman(args);
        Assert.True(r.Code == 0, $"podman {string.Join(' ', args)} exited {r.Code}: {r.Out}{r.Err}");
        return r.Out;
    }

    /// <summary>Runs a command in a container; true when it exits 0.</summary>
    public static bool InContainer(string container, params string[] command) => TryPodman(["exec", container, .. command]).Code == 0;

    public static EndpointOutput Endpoint(string pod) =>
        JsonSerializer.Deserialize(Mb("endpoint", "get", pod, "-o", "json"), AgentJsonContext.Default.EndpointOutput)!;

    public static List<EndpointOutput> AllEndpoints() =>
        JsonSerializer.Deserialize(Mb("endpoint", "list", "-o", "json"), AgentJsonContext.Default.ListEndpointOutput)!;

    public static string Write(string name, string text)
    {
        var path = Path.Combine(Root, name);
        File.WriteAllText(path, text);
        return path;
    }

    /// <summary>Host ends this agent made that still exist (tagged with its alias).</summary>
    public static List<string> OwnInterfaces()
    {
        using var document = JsonDocument.Parse(Run("ip", "-j", "link", "show"));
        return document.RootElement.EnumerateArray()
            .Where(l => l.TryGetProperty("ifalias", out var a)
                && a.GetString()?.StartsWith($"membrane:{Prefix}:", StringComparison.Ordinal) == true)
            .Select(l => l.GetProperty("ifname").GetString()!).ToList();
    }

    /// <summary>Routes in the host's tables to this agent's pod ranges.</summary>
    public static string PodRoutes() =>
        string.Join("\n", (Run("ip", "route", "show") + Run("ip", "-6", "route", "show")).Split('\n')
            .Where(l => l.StartsWith("10.201.", StringComparison.Ordinal) || l.StartsWith("fd00:201:", StringComparison.Ordinal)));

    public static string Run(string file, params string[] args)
    {
        var r = Exec(file, args, []);
        Assert.True(r.Code == 0, $"{file} {string.Join(' ', args)} exited {r.Code}: {r.Err}");
        return r.Out;
    }

    public static (int Code, string Out, string Err) Exec(string file, IEnumerable<string> args, Dictionary<string, string> environment)
    {
        var start = new ProcessStartInfo(file) { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        foreach (var (key, value) in environment)
        {
            start.Environment[key] = value;
        }
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    public void Cleanup()
    {
        if (File.Exists(PodmanConf))
        {
            TryPodman("pod", "rm", "--all", "--force", "--time", "0");
            TryPodman("system", "reset", "--force");
        }
        if (_agent is { HasExited: false })
        {
            _agent.Kill();
            _agent.WaitForExit();
        }
        foreach (var socket in new[] { ContainerdSocket, ChainedContainerdSocket }.Where(File.Exists))
        {
            RemoveSandboxes(socket); // as a kubelet's garbage collection would: their DELs reach the agent
        }
        // containerd and its shims (their command lines name the test's socket), then whatever they left mounted.
        Exec("pkill", ["-9", "-f", Path.Combine(Root, "containerd")], []);
        foreach (var containerd in _containerds)
        {
            containerd.WaitForExit();
        }
        _containerds.Clear();
        foreach (var mount in File.ReadAllLines("/proc/mounts").Select(l => l.Split(' ')[1])
                     .Where(m => m.StartsWith(Root + "/", StringComparison.Ordinal)).Reverse())
        {
            Exec("umount", ["-l", mount], []);
        }
        Cli("cleanup", "--name-prefix", Prefix, "--pin-dir", PinDirectory, "--state-dir", StateDirectory);
        if (Exec("ip", ["link", "show", "mbcnibr0"], []).Code == 0)
        {
            Exec("ip", ["link", "delete", "mbcnibr0"], []);
        }
        // host-local's leases of the chained network (released by its DELs; an aborted run may leave some)
        foreach (var directory in new[] { Root, $"/var/lib/cni/networks/{ChainedNetwork}" }.Where(Directory.Exists))
        {
            Directory.Delete(directory, recursive: true);
        }
    }

    private static void RemoveSandboxes(string socket)
    {
        try
        {
            using var cri = new Cri.CriClient(socket);
            var sandboxes = cri.Runtime.ListPodSandbox(new Cri.V1.ListPodSandboxRequest(), deadline: DateTime.UtcNow.AddSeconds(10));
            foreach (var sandbox in sandboxes.Items)
            {
                cri.Runtime.StopPodSandbox(new Cri.V1.StopPodSandboxRequest { PodSandboxId = sandbox.Id });
                cri.Runtime.RemovePodSandbox(new Cri.V1.RemovePodSandboxRequest { PodSandboxId = sandbox.Id });
            }
        }
        catch (Grpc.Core.RpcException)
        {
            // containerd is not answering: killing it below is all that is left
        }
    }

    public void Dispose() => Cleanup();
}

[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class CniAgentGroup : ICollectionFixture<CniAgentFixture>
{
    public const string Name = "cni agent";
}
