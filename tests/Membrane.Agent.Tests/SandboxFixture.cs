using System.Diagnostics;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// A real agent process with its own sandbox (namespace prefix, state directory, pinned maps), shared by the
/// end-to-end tests, driven through the real `membrane` command. Everything it creates is removed at the end,
/// and leftovers of an earlier aborted run are removed at the start.
/// </summary>
public sealed class SandboxFixture : IDisposable
{
    public const string Prefix = "mbe2e";
    public static readonly string PinDirectory = $"/sys/fs/bpf/{Prefix}";
    public static string StateDirectory { get; } = Path.Combine(Path.GetTempPath(), $"{Prefix}-state");
    private Process? _agent;

    /// <summary>Small enough that a flood fills a pod's conntrack table in a second (ConntrackFairnessTests).</summary>
    public const int ConntrackEntriesPerEndpoint = 2048;

    public const string Workloads = """
        apiVersion: v1
        kind: Namespace
        metadata: {name: e2e-a, labels: {team: a}}
        ---
        apiVersion: v1
        kind: Namespace
        metadata: {name: e2e-b, labels: {team: b}}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: client, namespace: e2e-a, labels: {app: client}}
        spec: {containers: [{name: c, image: busybox}]}
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: server, namespace: e2e-a, labels: {app: server}}
        spec:
          containers:
          - name: s
            image: nginx
            ports: [{name: http, containerPort: 80}, {name: dns, containerPort: 53, protocol: UDP}]
        ---
        apiVersion: v1
        kind: Pod
        metadata: {name: other, namespace: e2e-b, labels: {app: other}}
        spec: {containers: [{name: o, image: busybox, ports: [{containerPort: 80}]}]}
        """;

    public SandboxFixture()
    {
        Cleanup();
        StartAgent();
        Apply(Workloads);
    }

    public static string Socket => Path.Combine(StateDirectory, "membrane.sock");

    public static string MembraneDll => Path.Combine(AppContext.BaseDirectory, "membrane.dll");

    public int AgentPid => _agent!.Id;

    /// <summary>The host routing the agent runs with (<c>--host-routing</c>): tests of the legacy path switch to it.</summary>
    public string HostRouting { get; private set; } = "bpf";

    /// <summary>Restarts the agent with <paramref name="mode"/> unless it already runs with it (endpoints are adopted).</summary>
    public void UseHostRouting(string mode)
    {
        if (mode != HostRouting || _agent is null or { HasExited: true })
        {
            KillAgent();
            StartAgent("--host-routing", mode);
        }
    }

    public void StartAgent(params string[] extra)
    {
        var routing = Array.IndexOf(extra, "--host-routing");
        HostRouting = routing >= 0 ? extra[routing + 1] : "bpf";
        var (started, code, stderr) = TryStartAgent(extra);
        if (!started)
        {
            throw new InvalidOperationException($"the agent exited with {code}: {stderr}");
        }
    }

    /// <summary>Starts the agent and waits until it answers, or until it exits (with its exit code and error output).</summary>
    public (bool Started, int ExitCode, string Stderr) TryStartAgent(params string[] extra)
    {
        var (agent, code, stderr) = AgentUnderTest.Start(
            ["--state-dir", StateDirectory, "--name-prefix", Prefix, "--pin-dir", PinDirectory, "--conntrack-entries-per-endpoint",
                $"{ConntrackEntriesPerEndpoint}", .. extra],
            () => File.Exists(Socket) && Cli("status").Code == 0);
        _agent = agent;
        return (agent is not null, code, stderr);
    }

    /// <summary>kill -9: no chance to clean up, as after a crash.</summary>
    public void KillAgent()
    {
        if (_agent is null or { HasExited: true })
        {
            return;
        }
        _agent.Kill();
        _agent.WaitForExit();
    }

    public (int Code, string Out, string Err) Cli(params string[] args)
    {
        var start = new ProcessStartInfo("dotnet") { RedirectStandardError = true, RedirectStandardOutput = true, UseShellExecute = false };
        start.ArgumentList.Add(MembraneDll);
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        start.Environment["MEMBRANE_SOCKET"] = Socket;
        using var p = Process.Start(start)!;
        var stdout = p.StandardOutput.ReadToEndAsync();
        var stderr = p.StandardError.ReadToEnd();
        p.WaitForExit();
        return (p.ExitCode, stdout.Result, stderr);
    }

    public (int Code, string Out, string Err) CliOk(params string[] args)
    {
        var r = Cli(args);
        Assert.True(r.Code == 0, $"membrane {string.Join(' ', args)} exited {r.Code}: {r.Out}{r.Err}");
        return r;
    }

    /// <summary>A CiliumNetworkPolicy in namespace e2e-a with <paramref name="spec"/> (YAML) as its spec.</summary>
    public static string Cnp(string name, string spec) =>
        $"apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {{name: {name}, namespace: e2e-a}}\nspec:\n" +
        string.Join("\n", spec.Split('\n').Select(l => "  " + l)) + "\n";

    public static string WriteYaml(string yaml)
    {
        var file = Path.Combine(Path.GetTempPath(), $"{Prefix}-{Guid.NewGuid():N}.yaml");
        File.WriteAllText(file, yaml);
        return file;
    }

    public (int Code, string Out, string Err) Apply(string yaml, string command = "apply")
    {
        var file = WriteYaml(yaml);
        try
        {
            return command == "import" ? Cli("policy", "import", file) : Cli(command, "-f", file);
        }
        finally
        {
            File.Delete(file);
        }
    }

    public EndpointOutput Endpoint(string pod) =>
        JsonSerializer.Deserialize(CliOk("endpoint", "get", pod, "-o", "json").Out, AgentJsonContext.Default.EndpointOutput)!;

    /// <summary>
    /// Back to the base workloads without policies, on <paramref name="hostRouting"/> (every class's tests start here, so
    /// a class on the legacy path leaves the next class on the default one; the agent restarts only when the mode changes).
    /// </summary>
    public void Reset(string hostRouting = "bpf")
    {
        UseHostRouting(hostRouting);
        CliOk("policy", "delete", "--all");
        var r = Apply(Workloads);
        Assert.True(r.Code == 0, r.Err);
    }

    public void Cleanup()
    {
        if (_agent is { HasExited: false })
        {
            _agent.Kill();
            _agent.WaitForExit();
        }
        Cli("cleanup", "--name-prefix", Prefix, "--pin-dir", PinDirectory, "--state-dir", StateDirectory);
    }

    public void Dispose() => Cleanup();
}

/// <summary>The sandbox tests, one at a time on one agent; beside the cluster group (see <c>ClusterGroup</c>).</summary>
[CollectionDefinition(Name)]
public sealed class SandboxGroup : ICollectionFixture<SandboxFixture>
{
    public const string Name = "sandbox";
}
