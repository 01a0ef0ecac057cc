using System.Text;
using System.Text.Encodings.Web;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Cni;

/// <summary>
/// The plugin: reads the request (environment) and the network configuration (stdin), asks the agent, and prints a
/// CNI result or a CNI error. It does no policy work itself. Exit status 0 on success, 1 with error JSON otherwise.
/// </summary>
public static class CniPlugin
{
    public static async Task<int> RunAsync(Func<string, string?> environment, TextReader stdin, TextWriter stdout)
    {
        ArgumentNullException.ThrowIfNull(environment);
        ArgumentNullException.ThrowIfNull(stdin);
        ArgumentNullException.ThrowIfNull(stdout);
        var version = NetworkConfig.SupportedVersions[^1];
        try
        {
            var request = CniRequest.FromEnvironment(environment);
            var text = await ReadBoundedAsync(stdin).ConfigureAwait(false);
            if (request.Command == "VERSION")
            {
                await stdout.WriteAsync(Version(RequestedVersion(text) ?? version)).ConfigureAwait(false);
                return 0;
            }
            var socket = environment("MEMBRANE_SOCKET") is { Length: > 0 } s ? s : AgentDefaults.SocketPath(AgentDefaults.StateDirectory);
            var config = NetworkConfig.Parse(text, socket);
            version = config.CniVersion;
            var output = await ExecuteAsync(request, config).ConfigureAwait(false);
            if (output is not null)
            {
                await stdout.WriteAsync(output).ConfigureAwait(false);
            }
            return 0;
        }
        catch (CniException e)
        {
            await stdout.WriteAsync(Error(version, e.Code, e.Message, e.Details)).ConfigureAwait(false);
            return 1;
        }
#pragma warning disable CA1031 // a runtime must always get CNI error JSON, whatever failed (the transport included)
        catch (Exception e)
#pragma warning restore CA1031
        {
            await stdout.WriteAsync(Error(version, CniErrorCode.IoFailure, $"membrane-cni failed: {e.Message}", e.GetType().Name))
                .ConfigureAwait(false);
            return 1;
        }
    }

    /// <summary>The network configuration runtimes send is a few KiB; more than 1 MiB is refused, not read into memory.</summary>
    public const int MaxConfigurationChars = 1 << 20;

    private static async Task<string> ReadBoundedAsync(TextReader stdin)
    {
        var buffer = new char[MaxConfigurationChars + 1];
        var total = 0;
        int n;
        while (total < buffer.Length && (n = await stdin.ReadAsync(buffer.AsMemory(total)).ConfigureAwait(false)) > 0)
        {
            total += n;
        }
        return total > MaxConfigurationChars
            ? throw new CniException(CniErrorCode.DecodeFailure, $"the network configuration on stdin is larger than " +
                $"{MaxConfigurationChars:N0} characters")
            : new string(buffer, 0, total);
    }

    private static async Task<string?> ExecuteAsync(CniRequest request, NetworkConfig config)
    {
        using var agent = new AgentClient(config.AgentSocket);
        var json = AgentJsonContext.Default;
        var attachment = new CniAttachmentRequest(request.ContainerId ?? "", request.InterfaceName ?? "", request.Netns,
            request.PodNamespace, request.PodName, config.PrevResult, config.CniVersion, config.Name);
        try
        {
            switch (request.Command)
            {
                case "ADD":
                    var added = await agent.Post("v1/cni/add", attachment, json.CniAttachmentRequest, json.CniAddResponse)
                        .ConfigureAwait(false);
                    // Chained: the interface is the earlier plugin's, and so is the result, passed on unchanged.
                    return config.PrevResult ?? added.Result;
                case "DEL":
                    await agent.Post("v1/cni/del", attachment, json.CniAttachmentRequest, json.ApplyResponse).ConfigureAwait(false);
                    return null;
                case "CHECK":
                    await agent.Post("v1/cni/check", attachment, json.CniAttachmentRequest, json.ApplyResponse).ConfigureAwait(false);
                    return null;
                case "STATUS":
                    await agent.Get("v1/cni/status", json.StatusResponse).ConfigureAwait(false);
                    return null;
                default: // GC
                    var gc = new CniGcRequest(ValidAttachments(config), config.Name);
                    await agent.Post("v1/cni/gc", gc, json.CniGcRequest, json.ApplyResponse).ConfigureAwait(false);
                    return null;
            }
        }
        catch (AgentUnreachableException)
        {
            return request.Command switch
            {
                // A DEL must succeed when the agent is away: it is queued and applied when the agent is back.
                "DEL" => Queued(request, config),
                "STATUS" => throw new CniException(CniErrorCode.NotAvailable,
                    $"the Membrane agent is not reachable at {config.AgentSocket}; start it with 'membrane agent --runtime cni'"),
                _ => throw new CniException(CniErrorCode.TryAgainLater,
                    $"the Membrane agent is not reachable at {config.AgentSocket}; start it with 'membrane agent --runtime cni' and retry"),
            };
        }
        catch (AgentRequestException e) when (e.StatusCode == 404)
        {
            throw new CniException(request.Command == "STATUS" ? CniErrorCode.NotAvailable : CniErrorCode.TryAgainLater,
                $"the agent at {config.AgentSocket} does not serve container runtimes; run it with 'membrane agent --runtime cni'");
        }
        catch (AgentRequestException e)
        {
            throw new CniException(CniErrorCode.InvalidNetworkConfig, e.Response.Error,
                string.Join("; ", e.Response.Errors.Select(d => d.Message)));
        }
    }

    private static string? Queued(CniRequest request, NetworkConfig config)
    {
        try
        {
            new PendingDeletes(config.DeleteQueue).Enqueue(request);
            return null;
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or InvalidOperationException)
        {
            throw new CniException(CniErrorCode.IoFailure,
                $"the agent is away and the deletion could not be queued in {config.DeleteQueue}: {e.Message}");
        }
    }

    /// <summary>GC's <c>cni.dev/valid-attachments</c>: the attachments the runtime still has.</summary>
    private static List<CniAttachmentKey> ValidAttachments(NetworkConfig config) => (config.ValidAttachments
        ?? throw new CniException(CniErrorCode.InvalidNetworkConfig, "GC needs \"cni.dev/valid-attachments\" (the attachments the " +
            "runtime still has): without it nothing is removed"))
        .Select(a => new CniAttachmentKey(a.ContainerId, a.InterfaceName)).ToList();

    private static string? RequestedVersion(string text)
    {
        try
        {
            using var document = JsonDocument.Parse(text.Length == 0 ? "{}" : text);
            return document.RootElement.ValueKind == JsonValueKind.Object
                && document.RootElement.TryGetProperty("cniVersion", out var v) && v.ValueKind == JsonValueKind.String
                && NetworkConfig.SupportedVersions.Contains(v.GetString()) ? v.GetString() : null;
        }
        catch (JsonException)
        {
            return null;
        }
    }

    private static string Version(string version) => Json(w =>
    {
        w.WriteString("cniVersion", version);
        w.WriteStartArray("supportedVersions");
        foreach (var supported in NetworkConfig.SupportedVersions)
        {
            w.WriteStringValue(supported);
        }
        w.WriteEndArray();
    });

    private static string Error(string version, int code, string message, string? details) => Json(w =>
    {
        w.WriteString("cniVersion", version);
        w.WriteNumber("code", code);
        w.WriteString("msg", message);
        if (details is { Length: > 0 })
        {
            w.WriteString("details", details);
        }
    });

    private static string Json(Action<Utf8JsonWriter> body)
    {
        using var buffer = new MemoryStream();
        var options = new JsonWriterOptions { Indented = true, Encoder = JavaScriptEncoder.UnsafeRelaxedJsonEscaping };
        using (var writer = new Utf8JsonWriter(buffer, options))
        {
            writer.WriteStartObject();
            body(writer);
            writer.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray()) + "\n";
    }
}
