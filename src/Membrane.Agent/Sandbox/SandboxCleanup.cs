using System.CommandLine;
using Membrane.Api;

namespace Membrane.Agent.Sandbox;

/// <summary><c>cleanup</c>: removes everything an agent of a name prefix created, with or without the agent.</summary>
public static class SandboxCleanup
{
    public static Command Command()
    {
        var prefix = new Option<string>("--name-prefix")
        {
            DefaultValueFactory = _ => AgentDefaults.NamePrefix,
            Description = "Prefix of the sandbox's namespaces"
        };
        var pinDir = new Option<string>("--pin-dir")
        {
            DefaultValueFactory = _ => AgentDefaults.PinDirectory,
            Description = "Pinned maps to remove"
        };
        var stateDir = new Option<string?>("--state-dir")
        {
            Description = "Also delete this state directory, with the state file and its backup (destructive: the agent's objects, " +
                "endpoints and identity numbers are gone; only for a sandbox you are throwing away)",
        };
        var underlay = new Option<string>("--underlay-netns")
        {
            DefaultValueFactory = _ => "membrane-underlay",
            Description = "Cluster mode: the underlay namespace to remove this node's port from (removed with its last port)",
        };
        var command = new Command("cleanup", "Remove the sandbox's namespaces, pod servers and pinned maps (stop the agent first)")
        {
            prefix, pinDir, stateDir, underlay,
        };
        command.SetAction(parse =>
        {
            var removed = Run(parse.GetValue(prefix)!, parse.GetValue(pinDir)!, parse.GetValue(stateDir), parse.GetValue(underlay)!);
            Console.WriteLine($"removed {removed} network namespaces of prefix \"{parse.GetValue(prefix)}\", their pod servers and " +
                $"pinned maps");
            return 0;
        });
        return command;
    }

    /// <summary>Stops the pod servers, deletes the namespaces, the host ends of containers' interfaces, the pins and (if
    /// named) the state; the number of namespaces and interfaces removed.</summary>
    public static int Run(string namePrefix, string pinDirectory, string? stateDirectory, string underlayNamespace = "membrane-underlay")
    {
        var servers = new PodServers(new AgentOptions { NamePrefix = namePrefix });
        foreach (var pid in servers.Find(null))
        {
            try
            {
                using var process = System.Diagnostics.Process.GetProcessById(pid);
                process.Kill();
            }
            catch (ArgumentException)
            {
                // already gone
            }
        }
        UnderlayNetwork.Remove(underlayNamespace, namePrefix); // cluster mode: this node's port on the underlay
        var removed = 0;
        foreach (var line in Ip.Run("netns", "list").Split('\n', StringSplitOptions.RemoveEmptyEntries))
        {
            var ns = line.Split(' ')[0];
            if (ns.StartsWith(namePrefix + "-", StringComparison.Ordinal))
            {
                Ip.Run("netns", "delete", ns);
                removed++;
            }
        }
        removed += Cni.CniRuntime.RemoveInterfaces(namePrefix); // host ends of containers' interfaces (--runtime cni)
        if (Directory.Exists(pinDirectory))
        {
            Directory.Delete(pinDirectory, recursive: true);
        }
        if (stateDirectory is not null && Directory.Exists(stateDirectory))
        {
            Directory.Delete(stateDirectory, recursive: true);
        }
        return removed;
    }
}
