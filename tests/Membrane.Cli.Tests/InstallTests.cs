using System.Diagnostics;
using System.Net.Sockets;
using System.Text;

namespace Membrane.Cli.Tests;

/// <summary>
/// <c>scripts/install.sh</c> into a temporary prefix, as an operator installs it: the installed (self-contained)
/// binaries run the demo's first steps, the agent tells systemd it is ready over the notify protocol, the unit passes
/// <c>systemd-analyze verify</c>, bash completion completes; <c>scripts/uninstall.sh</c> leaves nothing behind.
/// </summary>
public sealed class InstallTests : IDisposable
{
    private const string Prefix = "mbins";
    private static readonly string Root = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", ".."));
    private readonly string _top = Path.Combine(Path.GetTempPath(), $"mbins-{Guid.NewGuid():N}");
    private readonly string _state = Path.Combine(Path.GetTempPath(), $"mbins-state-{Guid.NewGuid():N}");
    private readonly string _notify = Path.Combine(Path.GetTempPath(), $"mbins-notify-{Guid.NewGuid():N}.sock");
    private Process? _agent;

    private string InstallPrefix => Path.Combine(_top, "usr");

    private string Membrane => Path.Combine(InstallPrefix, "bin", "membrane");

    private static (int Code, string Out, string Err) Run(string file, IEnumerable<string> args, string? socket = null,
        IReadOnlyDictionary<string, string>? environment = null)
    {
        var start = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
            WorkingDirectory = Root,
        };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        if (socket is not null)
        {
            start.Environment["MEMBRANE_SOCKET"] = socket;
        }
        foreach (var (name, value) in environment ?? new Dictionary<string, string>())
        {
            start.Environment[name] = value;
        }
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        return (process.ExitCode, stdout.Result, stderr);
    }

    private (int Code, string Out, string Err) Installed(params string[] args) =>
        Run(Membrane, args, Path.Combine(_state, "membrane.sock"));

    [Fact]
    public void InstalledBinariesRunTheDemoAndUninstallLeavesNothing()
    {
        var install = Run("bash", [Path.Combine(Root, "scripts", "install.sh"), "--prefix", InstallPrefix]);
        Assert.True(install.Code == 0, install.Out + install.Err);
        Assert.Equal(1, Run("bash", [Path.Combine(Root, "scripts", "install.sh"), "--prefix", InstallPrefix]).Code); // not twice

        // Self-contained: the installed CLI runs without dotnet on PATH, and finds its agent beside it.
        var version = Run(Membrane, ["version"],
            environment: new Dictionary<string, string> { ["PATH"] = "/usr/sbin:/usr/bin:/sbin:/bin" });
        Assert.True(version.Code == 0, version.Err);
        Assert.Matches(@"^membrane \d+\.\d+\.\d+ \(commit ", version.Out);
        var unit = Path.Combine(InstallPrefix, "lib", "systemd", "system", "membrane-agent.service");
        Assert.Contains($"ExecStart={InstallPrefix}/bin/membrane-agent", File.ReadAllText(unit), StringComparison.Ordinal);
        var verify = Run("systemd-analyze", ["verify", unit]);
        Assert.True(verify.Code == 0, $"systemd-analyze verify: {verify.Out}{verify.Err}");

        // The agent under a stand-in for systemd: its parent is named systemd and NOTIFY_SOCKET is ours. READY=1 must
        // come, and only once the API answers.
        using var notify = new Socket(AddressFamily.Unix, SocketType.Dgram, ProtocolType.Unspecified);
        notify.Bind(new UnixDomainSocketEndPoint(_notify));
        notify.ReceiveTimeout = 60_000;
        var start = new ProcessStartInfo("sh") { UseShellExecute = false, RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "-c", "printf systemd > /proc/$$/comm; \"$0\" \"$@\"; exit $?", Membrane, "agent", "--state-dir", _state,
                     "--name-prefix", Prefix, "--pin-dir", $"/sys/fs/bpf/{Prefix}", "--metrics-address", "off" })
        {
            start.ArgumentList.Add(a);
        }
        start.Environment["NOTIFY_SOCKET"] = _notify;
        _agent = Process.Start(start)!;
        _agent.OutputDataReceived += (_, _) => { };
        _agent.ErrorDataReceived += (_, _) => { };
        _agent.BeginOutputReadLine();
        _agent.BeginErrorReadLine();
        var buffer = new byte[256];
        var message = Encoding.ASCII.GetString(buffer, 0, notify.Receive(buffer));
        Assert.Contains("READY=1", message, StringComparison.Ordinal);
        Assert.Equal(0, Installed("status").Code);

        // The demo's first steps, through the installed binaries.
        Assert.Equal(0, Installed("apply", "-f", Path.Combine(Root, "examples", "workloads", "demo.yaml")).Code);
        Assert.Contains("demo/web", Installed("endpoint", "list").Out, StringComparison.Ordinal);
        string[] ping = ["connectivity", "probe", "--from", "demo/client", "--to", "demo/web", "--protocol", "icmp", "--icmp-type",
            "EchoRequest"];
        Assert.Equal(0, Installed(ping).Code);
        Assert.Equal(0, Installed("policy", "import", Path.Combine(Root, "examples", "policies", "l4-http-only.yaml")).Code);
        Assert.Equal(1, Installed(ping).Code);

        // Bash completion asks the installed CLI.
        var completion = Path.Combine(InstallPrefix, "share", "bash-completion", "completions", "membrane");
        var completed = Run("bash", ["-c", $"source {completion}; PATH={InstallPrefix}/bin:$PATH; COMP_LINE='membrane endpoint c'; " +
            "COMP_POINT=20; COMP_WORDS=(membrane endpoint c); COMP_CWORD=2; _membrane; echo \"${COMPREPLY[*]}\""]);
        Assert.Equal("config", completed.Out.Trim());

        StopAgent();
        var uninstall = Run("bash", [Path.Combine(Root, "scripts", "uninstall.sh"), "--prefix", InstallPrefix]);
        Assert.True(uninstall.Code == 0, uninstall.Out + uninstall.Err);
        Assert.False(Directory.Exists(_top), "uninstall left files behind: " + (Directory.Exists(_top)
            ? string.Join(", ", Directory.EnumerateFileSystemEntries(_top, "*", SearchOption.AllDirectories)) : ""));
    }

    private void StopAgent()
    {
        if (_agent is { HasExited: false })
        {
            _agent.Kill(entireProcessTree: true);
            _agent.WaitForExit();
        }
        if (File.Exists(Membrane))
        {
            Run(Membrane, ["cleanup", "--name-prefix", Prefix, "--pin-dir", $"/sys/fs/bpf/{Prefix}", "--state-dir", _state]);
        }
    }

    public void Dispose()
    {
        StopAgent();
        _agent?.Dispose();
        if (File.Exists(Path.Combine(InstallPrefix, "lib", "membrane", "installed-files")))
        {
            Run("bash", [Path.Combine(Root, "scripts", "uninstall.sh"), "--prefix", InstallPrefix]);
        }
        foreach (var directory in new[] { _top, _state }.Where(Directory.Exists))
        {
            Directory.Delete(directory, recursive: true);
        }
        File.Delete(_notify);
    }
}
