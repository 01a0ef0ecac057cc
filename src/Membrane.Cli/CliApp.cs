using System.CommandLine;
using Membrane.Api;
using Membrane.Cli.Commands;

namespace Membrane.Cli;

/// <summary>The <c>membrane</c> command tree. Exit status: 0 success (ALLOWED), 1 invalid/DENIED, 2 usage or other error.</summary>
public static class CliApp
{
    public const int Success = 0;
    public const int Failure = 1;
    public const int Error = 2;

    /// <summary>The one exit-code contract, printed by the root's help and after every command's.</summary>
    public const string ExitStatus = "Exit status: 0 success (allowed), 1 denied or invalid input, 2 any other error (3: cluster " +
        "mode, committed but not yet enforced everywhere)";

    /// <summary>
    /// <c>--node NAME</c> anywhere before <c>--</c>: the command talks to that node of the local cluster (its socket from
    /// cluster.json), as MEMBRANE_SOCKET would say. The option is taken out before the command line is parsed.
    /// </summary>
    private static string[] SelectNode(string[] args)
    {
        var at = Array.IndexOf(args, "--node");
        if (at < 0)
        {
            return args;
        }
        if (at + 1 >= args.Length || args[at + 1].StartsWith('-'))
        {
            throw new CliException("--node needs a node name (see 'membrane cluster status')");
        }
        Environment.SetEnvironmentVariable("MEMBRANE_SOCKET", ClusterCommands.SocketOf(args[at + 1]));
        return [.. args[..at], .. args[(at + 2)..]];
    }

    /// <summary>The command tree (without running anything): what <see cref="Run"/> parses, and what the doc tests parse with.</summary>
    public static RootCommand Create(CliOutput output)
    {
        var root = new RootCommand("Membrane: network policy for pods, enforced by eBPF (--node NAME: talk to that node of the local " +
            $"cluster). {ExitStatus}");
        root.Subcommands.Add(PolicyCommands.Create(output));
        root.Subcommands.Add(BpfCommands.Create(output));
        root.Subcommands.Add(AgentLauncher.AgentHelp());
        foreach (var command in AgentCommands.Create(output))
        {
            root.Subcommands.Add(command);
        }
        root.Subcommands.Add(ConnectivityCommands.Create(output));
        root.Subcommands.Add(ObserveCommands.Create(output));
        root.Subcommands.Add(UiCommand.Create(output));
        root.Subcommands.Add(VersionCommand.Create(output));
        root.Subcommands.Add(CniCommands.Create(output));
        root.Subcommands.Add(ClusterCommands.Create(output));
        root.Subcommands.Add(ClusterCommands.Nodes(output));
        root.Subcommands.Add(AgentLauncher.CleanupHelp());
        return root;
    }

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        ArgumentNullException.ThrowIfNull(args);
        ArgumentNullException.ThrowIfNull(stdout);
        ArgumentNullException.ThrowIfNull(stderr);
        var output = new CliOutput(stdout, stderr);
        if (args is ["agent", ..] or ["cleanup", ..])
        {
            // The agent's own executable does these: the CLI links none of the agent.
            try
            {
                return AgentLauncher.Exec(args[0] == "agent" ? args[1..] : args);
            }
            catch (CliException e)
            {
                stderr.WriteLine($"error: {e.Message}");
                return Error;
            }
        }
        try
        {
            args = SelectNode(args);
        }
        catch (CliException e)
        {
            stderr.WriteLine($"error: {e.Message}");
            return Error;
        }
        var root = Create(output);
        var parse = root.Parse(args);
        if (parse.Errors.Count > 0)
        {
            foreach (var error in parse.Errors)
            {
                stderr.WriteLine($"error: {ParseErrors.Plain(error.Message)}");
            }
            stderr.WriteLine("Run 'membrane --help' for usage.");
            return Error;
        }
        try
        {
            var code = parse.InvokeAsync(new InvocationConfiguration
            {
                Output = stdout,
                Error = stderr,
                EnableDefaultExceptionHandler = false
            }).GetAwaiter().GetResult();
            if (parse.Action is System.CommandLine.Help.HelpAction && parse.CommandResult.Command != root)
            {
                stdout.WriteLine(ExitStatus);
            }
            return code;
        }
        catch (CliException e)
        {
            stderr.WriteLine($"error: {e.Message}");
            return Error;
        }
        catch (InvalidInputException e)
        {
            stderr.WriteLine(e.Message);
            return Failure;
        }
        catch (AgentRequestException e)
        {
            foreach (var detail in e.Response.Errors)
            {
                stderr.WriteLine(detail.Path.Length == 0 ? $"{detail.File}: {detail.ObjectName}: {detail.Message}"
                    : $"{detail.File}: {detail.ObjectName}: {detail.Path}: {detail.Message}");
            }
            stderr.WriteLine($"error: {e.Message}");
            return Failure;
        }
        catch (AgentUnreachableException e)
        {
            stderr.WriteLine($"error: {e.Message}");
            return Error;
        }
        catch (HttpRequestException e)
        {
            // The agent closed the connection mid-request (for instance on a request over its size limit).
            stderr.WriteLine($"error: the request to the agent failed: " +
                $"{e.Message}{(e.InnerException is { } inner ? $" ({inner.Message})" : "")}");
            return Error;
        }
    }
}

/// <summary>An error the user can act on: printed as one line, exit status 2.</summary>
public sealed class CliException(string message) : Exception(message);

/// <summary>Where commands write, and the shared <c>-o</c> option.</summary>
public sealed class CliOutput(TextWriter stdout, TextWriter stderr)
{
    public TextWriter Out { get; } = stdout;

    public TextWriter Err { get; } = stderr;

    public static Option<string> CreateFormatOption()
    {
        var option = new Option<string>("--output", "-o")
        {
            Description = "Output format: text or json",
            DefaultValueFactory = _ => "text",
        };
        option.OneOf("text", "json");
        return option;
    }
}
