using System.Diagnostics;
using System.Net.Sockets;

namespace Membrane.Cli.Tests;

/// <summary>
/// A socket someone made 0666: a user who is not root reaches it, and the agent closes the connection (it serves
/// root only). The CLI says so, naming the socket, its owner and mode, instead of "Broken pipe" (issue 24).
/// </summary>
public sealed class SocketPermissionTests : IDisposable
{
    private readonly string _socket = Path.Combine(Path.GetTempPath(), $"mbperm-{Guid.NewGuid():N}.sock");

    /// <summary>The CLI copied where uid 65534 can read it (the checkout may be in a directory only root enters).</summary>
    private readonly string _cli = Path.Combine(Path.GetTempPath(), $"mbperm-cli-{Guid.NewGuid():N}");

    private string CopyCli()
    {
        Directory.CreateDirectory(_cli);
        foreach (var file in Directory.GetFiles(AppContext.BaseDirectory))
        {
            File.Copy(file, Path.Combine(_cli, Path.GetFileName(file)));
        }
        using var chmod = Process.Start("chmod", ["-R", "a+rX", _cli]);
        chmod.WaitForExit();
        return Path.Combine(_cli, "membrane.dll");
    }

    [Fact]
    public async Task AUserWhoIsNotRootIsToldTheApiIsRootsOnly()
    {
        using var listener = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        listener.Bind(new UnixDomainSocketEndPoint(_socket));
        File.SetUnixFileMode(_socket, (UnixFileMode)0x1B6); // 0666
        listener.Listen(8);
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(60));
        // As the agent does with a peer that is not root: accept, then close at once.
        var closer = Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                using var connection = await listener.AcceptAsync(stop.Token);
            }
        });
        var start = new ProcessStartInfo("setpriv")
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            UseShellExecute = false,
        };
        foreach (var arg in new[] { "--reuid=65534", "--regid=65534", "--clear-groups", "dotnet",
            CopyCli(), "status" })
        {
            start.ArgumentList.Add(arg);
        }
        start.Environment["MEMBRANE_SOCKET"] = _socket;
        start.Environment["DOTNET_CLI_HOME"] = Path.GetTempPath();
        using var process = Process.Start(start)!;
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = await process.StandardError.ReadToEndAsync();
        await process.WaitForExitAsync();
        await stop.CancelAsync();
        Assert.Equal(2, process.ExitCode);
        Assert.Contains($"permission denied on {_socket}: the agent's API is for root only (you are uid 65534; the socket is owned by " +
            "uid 0, mode 666)", stderr, StringComparison.Ordinal);
        Assert.DoesNotContain("Broken pipe", stderr + await stdout, StringComparison.Ordinal);
        try
        {
            await closer;
        }
        catch (OperationCanceledException)
        {
        }
    }

    public void Dispose()
    {
        File.Delete(_socket);
        if (Directory.Exists(_cli))
        {
            Directory.Delete(_cli, recursive: true);
        }
    }
}
