using System.CommandLine;
using System.Runtime.InteropServices;

namespace Membrane.Cli;

/// <summary>
/// <c>membrane agent</c> and <c>membrane cleanup</c> are the agent's own executable (<c>membrane-agent</c>): the CLI
/// replaces itself with it (execvp), so the process id, signals and exit status are the agent's, as if it had been
/// started directly. The CLI links none of the agent's code.
/// </summary>
internal static partial class AgentLauncher
{
    public const string FileName = "membrane-agent";

    /// <summary>Help entries only: <see cref="CliApp"/> hands these commands, with their arguments, to the agent's executable.</summary>
    public static Command AgentHelp() =>
        new("agent", "Run the agent (root): the sandbox, the datapath and the API ('membrane agent --help' for its options)");

    public static Command CleanupHelp() =>
        new("cleanup", "Remove the sandbox's namespaces, pod servers and pinned maps (stop the agent first)");

    /// <summary>
    /// Where the agent is: $MEMBRANE_AGENT, its executable beside this one (installed), its assembly beside this one, in the
    /// source tree beside it, or on PATH.
    /// </summary>
    public static (string File, string[] Prefix) Locate()
    {
        if (Environment.GetEnvironmentVariable("MEMBRANE_AGENT") is { Length: > 0 } configured)
        {
            return File.Exists(configured)
                ? Command(Path.GetFullPath(configured))
                : throw new CliException($"MEMBRANE_AGENT names {configured}, which does not exist");
        }
        var here = AppContext.BaseDirectory;
        // Installed (scripts/install.sh): both executables side by side, self-contained; run the agent's own.
        if (Path.GetFileName(Environment.ProcessPath) == "membrane" && File.Exists(Path.Combine(here, FileName)))
        {
            return (Path.Combine(here, FileName), []);
        }
        // A build tree: src/Membrane.Cli/bin/<configuration>/<framework>/ beside src/Membrane.Agent/bin/<configuration>/<framework>/.
        var framework = new DirectoryInfo(here).Name;
        var configuration = new DirectoryInfo(here).Parent?.Name ?? "";
        var candidates = new[]
        {
            Path.Combine(here, FileName + ".dll"),
            Path.GetFullPath(Path.Combine(here, "..", "..", "..", "..", "Membrane.Agent", "bin", configuration, framework, FileName
                + ".dll")),
        };
        foreach (var candidate in candidates.Where(File.Exists))
        {
            return Command(candidate);
        }
        foreach (var directory in (Environment.GetEnvironmentVariable("PATH") ?? "").Split(':', StringSplitOptions.RemoveEmptyEntries))
        {
            var onPath = Path.Combine(directory, FileName);
            if (File.Exists(onPath))
            {
                return (onPath, []);
            }
        }
        throw new CliException($"cannot find the agent ({FileName}): build src/Membrane.Agent, put {FileName} on PATH, or set " +
            $"MEMBRANE_AGENT");
    }

    private static (string File, string[] Prefix) Command(string path) =>
        path.EndsWith(".dll", StringComparison.Ordinal) ? (DotnetHost(), [path]) : (path, []);

    private static string DotnetHost() =>
        Environment.ProcessPath is { } self && Path.GetFileNameWithoutExtension(self) == "dotnet" ? self : "dotnet";

    /// <summary>Replaces this process with the agent; returns only if that failed.</summary>
    public static int Exec(IEnumerable<string> arguments)
    {
        var (file, prefix) = Locate();
        var argv = new[] { file }.Concat(prefix).Concat(arguments).ToList();
        Console.Out.Flush();
        Console.Error.Flush();
        var pointers = new nint[argv.Count + 1];
        try
        {
            for (var i = 0; i < argv.Count; i++)
            {
                pointers[i] = Marshal.StringToCoTaskMemUTF8(argv[i]);
            }
            var path = Marshal.StringToCoTaskMemUTF8(file);
            try
            {
                ExecVp(path, pointers);
            }
            finally
            {
                Marshal.FreeCoTaskMem(path);
            }
            throw new CliException($"cannot run {file}: {Marshal.GetLastPInvokeErrorMessage()}");
        }
        finally
        {
            foreach (var pointer in pointers)
            {
                Marshal.FreeCoTaskMem(pointer);
            }
        }
    }

    [LibraryImport("libc", EntryPoint = "execvp", SetLastError = true)]
    private static partial int ExecVp(nint file, nint[] argv);
}
