using System.Text.Json;

namespace Membrane.Cni;

/// <summary>The network configuration a runtime passes on stdin (one plugin's entry of a conflist).</summary>
public sealed record NetworkConfig(string CniVersion, string Name, string Type, string AgentSocket, string DeleteQueue, string? PrevResult)
{
    /// <summary>GC's <c>cni.dev/valid-attachments</c>: the attachments the runtime still has.</summary>
    /// <remarks>Null when the runtime did not send the list (a GC then removes nothing).</remarks>
    public IReadOnlyList<(string ContainerId, string InterfaceName)>? ValidAttachments { get; init; }

    public static readonly IReadOnlyList<string> SupportedVersions = ["1.0.0", "1.1.0"];

    /// <summary>Chained mode: an earlier plugin made the interface and its result is passed on unchanged.</summary>
    public bool Chained => PrevResult is not null;

    /// <summary>Parses and checks the configuration; every problem is a CNI error that names the field.</summary>
    public static NetworkConfig Parse(string text, string defaultSocket)
    {
        JsonDocument document;
        try
        {
            document = JsonDocument.Parse(text);
        }
        catch (JsonException e)
        {
            throw new CniException(CniErrorCode.DecodeFailure, $"the network configuration on stdin is not JSON: {e.Message}");
        }
        using (document)
        {
            var root = document.RootElement;
            if (root.ValueKind != JsonValueKind.Object)
            {
                throw new CniException(CniErrorCode.InvalidNetworkConfig, "the network configuration must be a JSON object");
            }
            string? Text(string field, bool required)
            {
                if (!root.TryGetProperty(field, out var value) || value.ValueKind == JsonValueKind.Null)
                {
                    return required ? throw new CniException(CniErrorCode.InvalidNetworkConfig,
                        $"the network configuration has no \"{field}\"") : null;
                }
                return value.ValueKind == JsonValueKind.String && value.GetString() is { Length: > 0 } s
                    ? s
                    : throw new CniException(CniErrorCode.InvalidNetworkConfig, $"\"{field}\" must be a non-empty string");
            }
            var version = Text("cniVersion", required: true)!;
            if (!SupportedVersions.Contains(version))
            {
                throw new CniException(CniErrorCode.IncompatibleVersion,
                    $"cniVersion {version} is not supported; membrane-cni speaks {string.Join(" and ", SupportedVersions)}");
            }
            var socket = Text("agentSocket", required: false) ?? defaultSocket;
            var queue = Text("deleteQueue", required: false) ?? Path.Combine(Path.GetDirectoryName(socket) ?? "/", "cni-delete-queue");
            string? previous = null;
            if (root.TryGetProperty("prevResult", out var prev) && prev.ValueKind != JsonValueKind.Null)
            {
                previous = prev.ValueKind == JsonValueKind.Object
                    ? prev.GetRawText()
                    : throw new CniException(CniErrorCode.InvalidNetworkConfig,
                        "\"prevResult\" must be an object (the result of the plugin before)");
            }
            return new NetworkConfig(version, Text("name", required: true)!, Text("type", required: true)!, socket, queue, previous)
            {
                ValidAttachments = Attachments(root),
            };
        }
    }

    private static List<(string, string)>? Attachments(JsonElement root)
    {
        var result = new List<(string, string)>();
        if (!root.TryGetProperty("cni.dev/valid-attachments", out var list) || list.ValueKind == JsonValueKind.Null)
        {
            return null;
        }
        if (list.ValueKind != JsonValueKind.Array)
        {
            throw new CniException(CniErrorCode.InvalidNetworkConfig, "\"cni.dev/valid-attachments\" must be an array");
        }
        foreach (var item in list.EnumerateArray())
        {
            if (item.ValueKind != JsonValueKind.Object
                || !item.TryGetProperty("containerID", out var id) || id.ValueKind != JsonValueKind.String
                || !item.TryGetProperty("ifname", out var ifName) || ifName.ValueKind != JsonValueKind.String)
            {
                throw new CniException(CniErrorCode.InvalidNetworkConfig,
                    "each of \"cni.dev/valid-attachments\" must be {\"containerID\": \"…\", \"ifname\": \"…\"}");
            }
            result.Add((id.GetString()!, ifName.GetString()!));
        }
        return result;
    }
}
