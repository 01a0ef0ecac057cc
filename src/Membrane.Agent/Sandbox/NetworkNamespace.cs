using System.Diagnostics;
using System.Runtime.InteropServices;

namespace Membrane.Agent.Sandbox;

/// <summary>
/// Runs code inside a named network namespace: on a dedicated thread that joins the namespace with setns(2) and
/// then ends, so nothing else in the process changes namespace. Sockets created there stay in that namespace.
/// </summary>
public static partial class NetworkNamespace
{
    private const int CloneNewNet = 0x40000000;

    /// <summary>A name under /var/run/netns (what <c>ip netns</c> makes), or a path as runtimes pass it (/proc/PID/ns/net).</summary>
    public static string PathOf(string name)
    {
        ArgumentNullException.ThrowIfNull(name);
        return name.StartsWith('/') ? name : $"/var/run/netns/{name}";
    }

    public static bool Exists(string name) => File.Exists(PathOf(name));

    public static T Run<T>(string name, Func<T> action)
    {
        T result = default!;
        Exception? error = null;
        var thread = new Thread(() =>
        {
            try
            {
                using var handle = File.OpenHandle(PathOf(name));
                if (SetNs((int)handle.DangerousGetHandle(), CloneNewNet) != 0)
                {
                    throw new InvalidOperationException($"cannot enter network namespace {name}: errno {Marshal.GetLastPInvokeError()}");
                }
                result = action();
            }
#pragma warning disable CA1031 // not swallowed: carried to the calling thread and rethrown there
            catch (Exception e)
#pragma warning restore CA1031
            {
                error = e;
            }
        })
        { IsBackground = true, Name = $"netns {name}" };
        thread.Start();
        thread.Join();
        if (error is not null)
        {
            throw error is InvalidOperationException or Datapath.Ebpf.BpfException ? error : new InvalidOperationException(error.Message,
                error);
        }
        return result;
    }

    /// <summary>The Ethernet address of an interface in a namespace; null when there is no such interface.</summary>
    public static System.Net.NetworkInformation.PhysicalAddress? MacOf(string name, string interfaceName) => Run(name, () =>
        System.Net.NetworkInformation.NetworkInterface.GetAllNetworkInterfaces().FirstOrDefault(i => i.Name == interfaceName)
            ?.GetPhysicalAddress() is { } mac && mac.GetAddressBytes().Length == 6 ? mac : null);

    public static void Run(string name, Action action) => Run(name, () =>
    {
        action();
        return 0;
    });

    [LibraryImport("libc", EntryPoint = "setns", SetLastError = true)]
    private static partial int SetNs(int fd, int nstype);
}

/// <summary>Runs iproute2's <c>ip</c>; failures raise with its error text.</summary>
public static class Ip
{
    public static string Run(params string[] args) => Exec("ip", args, null);

    /// <summary>Runs many <c>ip</c> commands in one process (<c>ip [-n NS] -batch -</c>).</summary>
    public static void Batch(string? netns, IEnumerable<string> commands)
    {
        var args = netns is null ? new[] { "-batch", "-" } : new[] { "-n", netns, "-batch", "-" };
        Exec("ip", args, string.Join("\n", commands) + "\n");
    }

    public static string Exec(string file, IEnumerable<string> args, string? input)
    {
        ArgumentNullException.ThrowIfNull(args);
        var start = new ProcessStartInfo(file)
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
            RedirectStandardInput = input is not null,
            UseShellExecute = false,
        };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        using var process = Process.Start(start) ?? throw new InvalidOperationException($"cannot run {file}");
        if (input is not null)
        {
            process.StandardInput.Write(input);
            process.StandardInput.Close();
        }
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEnd();
        process.WaitForExit();
        if (process.ExitCode != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} failed: {stderr.Trim()}");
        }
        return stdout.Result;
    }
}
