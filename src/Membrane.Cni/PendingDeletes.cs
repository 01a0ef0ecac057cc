using System.Text;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Cni;

/// <summary>
/// DELs that arrived while the agent was away: one file per attachment (container id + interface), written
/// atomically and readable by root only, so a repeated DEL changes nothing and the agent applies each when it is back.
/// </summary>
public sealed class PendingDeletes(string directory)
{
    public string Directory => directory;

    public string Enqueue(CniRequest request)
    {
        ArgumentNullException.ThrowIfNull(request);
        // The queue is root's alone: one prepared by another user (or a link) is refused, never written through.
        SafeFiles.EnsurePrivateDirectory(directory);
        var name = $"{Sanitise(request.ContainerId!)}-{Sanitise(request.InterfaceName!)}.json";
        var path = Path.Combine(directory, name);
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer))
        {
            json.WriteStartObject();
            json.WriteString("containerId", request.ContainerId);
            json.WriteString("ifName", request.InterfaceName);
            json.WriteString("netns", request.Netns);
            json.WriteString("podNamespace", request.PodNamespace);
            json.WriteString("podName", request.PodName);
            json.WriteEndObject();
        }
        var temporary = path + ".tmp";
        using (var file = SafeFiles.CreateExclusive(temporary))
        {
            file.Write(buffer.ToArray());
        }
        File.Move(temporary, path, overwrite: true);
        return path;
    }

    /// <summary>Container ids are hex and interface names short, but a file name must never leave the queue.</summary>
    private static string Sanitise(string text)
    {
        var name = new StringBuilder(text.Length);
        foreach (var c in text)
        {
            name.Append(char.IsAsciiLetterOrDigit(c) || c is '-' or '_' or '.' ? c : '_');
        }
        return name.ToString().TrimStart('.');
    }
}
