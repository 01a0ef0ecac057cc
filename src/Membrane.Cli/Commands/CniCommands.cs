using System.CommandLine;
using System.Net;
using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Cli.Commands;

/// <summary>
/// <c>membrane cni install</c>: puts the plugin where a container runtime looks for plugins and writes a network
/// configuration list for one of its two modes. Nothing else on the machine changes.
/// </summary>
public static class CniCommands
{
    public const string PluginName = "membrane-cni";

    public static Command Create(CliOutput output)
    {
        var cni = new Command("cni", "Install the CNI plugin for container runtimes (podman, containerd)");
        cni.Subcommands.Add(Install(output));
        return cni;
    }

    private static Command Install(CliOutput output)
    {
        var binDir = new Option<string>("--bin-dir")
        {
            Description = "Where the runtime looks for plugins",
            DefaultValueFactory = _ => "/opt/cni/bin",
        };
        var confDir = new Option<string>("--conf-dir")
        {
            Description = "Where the runtime reads network configurations",
            DefaultValueFactory = _ => "/etc/cni/net.d",
        };
        var mode = new Option<string>("--mode")
        {
            Description = "interface: membrane-cni makes the interface; chained: after bridge + host-local",
            DefaultValueFactory = _ => "interface",
        };
        mode.OneOf("interface", "chained");
        var name = new Option<string>("--network") { Description = "The network's name", DefaultValueFactory = _ => "membrane" };
        var socket = new Option<string?>("--agent-socket") { Description = "The agent's API socket (default: the agent's default)" };
        var subnet = new Option<string>("--subnet")
        {
            Description = "chained mode: the IPv4 subnet host-local hands out on the bridge",
            DefaultValueFactory = _ => "10.210.0.0/24",
        };
        var bridge = new Option<string>("--bridge") { Description = "chained mode: the bridge's name", DefaultValueFactory = _ => "mbr0" };
        var command = new Command("install",
            "Copy membrane-cni into the plugin directory and write a conflist (prints what it wrote, as text only: no -o json)")
        {
            binDir, confDir, mode, name, socket, subnet, bridge,
        };
        command.SetAction(parse =>
        {
            var network = parse.GetValue(name)!;
            if (network.Length == 0 || network.Any(c => !char.IsAsciiLetterOrDigit(c) && c is not '-' and not '_' and not '.'))
            {
                throw new CliException($"--network \"{network}\" must be letters, digits, '-', '_' and '.'");
            }
            var chained = parse.GetValue(mode) == "chained";
            if (chained && !IPNetwork.TryParse(parse.GetValue(subnet), out _))
            {
                throw new CliException($"--subnet \"{parse.GetValue(subnet)}\" is not a CIDR prefix");
            }
            var plugin = InstallPlugin(Path.GetFullPath(parse.GetValue(binDir)!));
            var conflist = Path.Combine(Path.GetFullPath(parse.GetValue(confDir)!), $"10-{network}.conflist");
            Directory.CreateDirectory(Path.GetDirectoryName(conflist)!);
            WriteAtomically(conflist, Conflist(network, chained, parse.GetValue(socket), parse.GetValue(subnet)!, parse.GetValue(bridge)!));
            output.Out.WriteLine($"plugin   {plugin}");
            output.Out.WriteLine($"conflist {conflist} ({(chained ? "chained after bridge + host-local" : "interface mode")})");
            return CliApp.Success;
        });
        return command;
    }

    /// <summary>
    /// A native (AOT) plugin is one file and is copied as is. A framework-dependent build is several files: they go
    /// into <c>membrane-cni.d</c> beside a two-line launcher named <c>membrane-cni</c>.
    /// </summary>
    private static string InstallPlugin(string binDir)
    {
        var source = LocatePlugin();
        Directory.CreateDirectory(binDir);
        var target = Path.Combine(binDir, PluginName);
        var directory = Path.GetDirectoryName(source)!;
        if (!File.Exists(Path.Combine(directory, PluginName + ".dll")))
        {
            CopyExecutable(source, target);
            return target;
        }
        var payload = Path.Combine(binDir, PluginName + ".d");
        Directory.CreateDirectory(payload);
        foreach (var file in Directory.EnumerateFiles(directory).Where(f => Path.GetFileName(f) == PluginName
                     || f.EndsWith(".dll", StringComparison.Ordinal) || f.EndsWith(".json", StringComparison.Ordinal)))
        {
            CopyExecutable(file, Path.Combine(payload, Path.GetFileName(file)));
        }
        WriteAtomically(target, $"#!/bin/sh\nexec '{Path.Combine(payload, PluginName)}' \"$@\"\n");
        File.SetUnixFileMode(target, (UnixFileMode)0b111_101_101);
        return target;
    }

    /// <summary>$MEMBRANE_CNI, beside this CLI, or the build tree beside it.</summary>
    private static string LocatePlugin()
    {
        if (Environment.GetEnvironmentVariable("MEMBRANE_CNI") is { Length: > 0 } configured)
        {
            return File.Exists(configured) ? Path.GetFullPath(configured)
                : throw new CliException($"MEMBRANE_CNI names {configured}, which does not exist");
        }
        var here = AppContext.BaseDirectory;
        var framework = new DirectoryInfo(here).Name;
        var configuration = new DirectoryInfo(here).Parent?.Name ?? "";
        var candidates = new[]
        {
            Path.Combine(here, PluginName),
            Path.GetFullPath(Path.Combine(here, "..", "..", "..", "..", "Membrane.Cni", "bin", configuration, framework, PluginName)),
        };
        return candidates.FirstOrDefault(File.Exists) ?? throw new CliException($"cannot find {PluginName}: build src/Membrane.Cni (or " +
            "publish it with Native AOT) and set MEMBRANE_CNI to the executable");
    }

    private static void CopyExecutable(string source, string target)
    {
        var temporary = target + ".tmp";
        File.Copy(source, temporary, overwrite: true);
        File.SetUnixFileMode(temporary, (UnixFileMode)0b111_101_101);
        File.Move(temporary, target, overwrite: true);
    }

    private static void WriteAtomically(string path, string text)
    {
        File.WriteAllText(path + ".tmp", text);
        File.Move(path + ".tmp", path, overwrite: true);
    }

    /// <summary>The network configuration list: membrane-cni alone, or after bridge + host-local (chained).</summary>
    public static string Conflist(string network, bool chained, string? socket, string subnet, string bridge)
    {
        using var buffer = new MemoryStream();
        var options = new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using (var json = new Utf8JsonWriter(buffer, options))
        {
            json.WriteStartObject();
            json.WriteString("cniVersion", "1.0.0");
            json.WriteString("name", network);
            json.WriteStartArray("plugins");
            if (chained)
            {
                // isGateway false: pods on the bridge reach each other at layer 2 and the host's forwarding stays off.
                json.WriteStartObject();
                json.WriteString("type", "bridge");
                json.WriteString("bridge", bridge);
                json.WriteBoolean("isGateway", false);
                json.WriteBoolean("ipMasq", false);
                json.WriteBoolean("hairpinMode", false);
                json.WriteStartObject("ipam");
                json.WriteString("type", "host-local");
                json.WriteStartArray("ranges");
                json.WriteStartArray();
                json.WriteStartObject();
                json.WriteString("subnet", subnet);
                json.WriteEndObject();
                json.WriteEndArray();
                json.WriteEndArray();
                json.WriteEndObject();
                json.WriteEndObject();
            }
            json.WriteStartObject();
            json.WriteString("type", PluginName);
            if (socket is not null)
            {
                json.WriteString("agentSocket", Path.GetFullPath(socket));
            }
            json.WriteEndObject();
            json.WriteEndArray();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }
}
