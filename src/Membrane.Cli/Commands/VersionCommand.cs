using System.CommandLine;
using System.Reflection;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Cli.Commands;

/// <summary>
/// <c>membrane version</c>: this build (version and the commit it was built from), the agent's version when one
/// answers, and the kernel features the datapath relies on, read from /proc and /sys.
/// </summary>
public static class VersionCommand
{
    public static Command Create(CliOutput output)
    {
        var format = CliOutput.CreateFormatOption();
        var command = new Command("version", "Version, commit and the kernel's BPF features Membrane relies on") { format };
        command.SetAction(async parse =>
        {
            var informational = typeof(VersionCommand).Assembly.GetCustomAttribute<AssemblyInformationalVersionAttribute>()?
                .InformationalVersion ?? "0";
            var (version, commit) = informational.Split('+') is [var v, var c] ? (v, c) : (informational, "unknown");
            string? agent;
            try
            {
                using var client = AgentClient.FromEnvironment();
                agent = (await client.Get("v1/status", AgentJsonContext.Default.StatusResponse).ConfigureAwait(false)).Version;
            }
            catch (Exception e) when (e is AgentUnreachableException or HttpRequestException or IOException or AgentRequestException)
            {
                agent = null;
            }
            var release = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
            var features = new Dictionary<string, bool>(StringComparer.Ordinal)
            {
                ["btf"] = File.Exists("/sys/kernel/btf/vmlinux"),
                ["jit"] = File.Exists("/proc/sys/net/core/bpf_jit_enable")
                    && File.ReadAllText("/proc/sys/net/core/bpf_jit_enable").Trim() != "0",
                ["bpffs"] = File.ReadLines("/proc/mounts").Any(l => l.Split(' ') is [_, "/sys/fs/bpf", "bpf", ..]),
                ["ringbuf"] = AtLeast(release, 5, 8),
                ["tcx"] = AtLeast(release, 6, 6),
            };
            if (parse.GetValue(format) == "json")
            {
                using var stream = new MemoryStream();
                using (var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true }))
                {
                    json.WriteStartObject();
                    json.WriteString("version", version);
                    json.WriteString("commit", commit);
                    json.WriteString("agentVersion", agent);
                    json.WriteString("kernel", release);
                    json.WriteStartObject("features");
                    foreach (var (name, present) in features)
                    {
                        json.WriteBoolean(name, present);
                    }
                    json.WriteEndObject();
                    json.WriteEndObject();
                }
                output.Out.WriteLine(System.Text.Encoding.UTF8.GetString(stream.ToArray()));
                return CliApp.Success;
            }
            output.Out.WriteLine($"membrane {version} (commit {commit})");
            output.Out.WriteLine(agent is null ? "agent:  not reachable" : $"agent:  {agent}");
            output.Out.WriteLine($"kernel: {release}; BTF {Yes(features["btf"])}, BPF JIT {Yes(features["jit"])}, bpffs mounted " +
                $"{Yes(features["bpffs"])}, ring buffer (5.8+) {Yes(features["ringbuf"])}, tcx links (6.6+) {Yes(features["tcx"])}");
            return CliApp.Success;
        });
        return command;
    }

    private static string Yes(bool value) => value ? "yes" : "no";

    private static bool AtLeast(string release, int major, int minor)
    {
        var parts = release.Split('.', '-');
        return parts.Length >= 2 && int.TryParse(parts[0], out var a) && int.TryParse(parts[1], out var b)
            && (a > major || (a == major && b >= minor));
    }
}
