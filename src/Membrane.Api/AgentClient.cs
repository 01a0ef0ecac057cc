using System.Net.Http.Json;
using System.Net.Sockets;
using System.Text.Json;
using System.Text.Json.Serialization.Metadata;
namespace Membrane.Api;

/// <summary>Talks to the agent over its Unix socket.</summary>
public sealed class AgentClient : IDisposable
{
    private readonly HttpClient _http;

    public AgentClient(string socketPath)
    {
        SocketPath = socketPath;
        var handler = new SocketsHttpHandler
        {
            ConnectCallback = async (_, cancel) =>
            {
                var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
                try
                {
                    await socket.ConnectAsync(new UnixDomainSocketEndPoint(socketPath), cancel).ConfigureAwait(false);
                    return new NetworkStream(socket, ownsSocket: true);
                }
                catch (SocketException e)
                {
                    socket.Dispose();
                    throw new AgentUnreachableException(e.SocketErrorCode == SocketError.AccessDenied
                        ? $"permission denied on {socketPath}: the agent's API is for root"
                        : $"cannot reach the agent at {socketPath} ({e.SocketErrorCode}); is 'membrane agent' running?");
                }
            },
        };
        _http = new HttpClient(handler) { BaseAddress = new Uri("http://membrane/"), Timeout = Timeout.InfiniteTimeSpan };
    }

    public string SocketPath { get; }

    /// <summary>The socket: $MEMBRANE_SOCKET, or the default state directory's.</summary>
    public static AgentClient FromEnvironment() =>
        new(Environment.GetEnvironmentVariable("MEMBRANE_SOCKET") is { Length: > 0 } s ? s
            : AgentDefaults.SocketPath(AgentDefaults.StateDirectory));

    public Task<T> Get<T>(string path, JsonTypeInfo<T> type) => Send(new HttpRequestMessage(HttpMethod.Get, path), type);

    public Task<T> Delete<T>(string path, JsonTypeInfo<T> type) => Send(new HttpRequestMessage(HttpMethod.Delete, path), type);

    /// <summary>Posts with Expect: 100-continue, so a body the agent refuses (too large) is answered before it is sent.</summary>
    public Task<T> Post<TBody, T>(string path, TBody body, JsonTypeInfo<TBody> bodyType, JsonTypeInfo<T> type,
        CancellationToken cancel = default) =>
        Send(new HttpRequestMessage(HttpMethod.Post, path)
        {
            Content = JsonContent.Create(body, bodyType),
            Headers = { ExpectContinue = true }
        }, type, cancel);

    public Task<T> Post<T>(string path, JsonTypeInfo<T> type) => Send(new HttpRequestMessage(HttpMethod.Post, path), type);

    private async Task<T> Send<T>(HttpRequestMessage request, JsonTypeInfo<T> type, CancellationToken cancel = default)
    {
        using (request)
        {
            using var response = await Unwrapped(_http.SendAsync(request, cancel)).ConfigureAwait(false);
            var text = await response.Content.ReadAsStringAsync(cancel).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
            {
                ErrorResponse? error = null;
                try
                {
                    error = JsonSerializer.Deserialize(text, AgentJsonContext.Default.ErrorResponse);
                }
                catch (JsonException)
                {
                }
                throw new AgentRequestException(error ?? new ErrorResponse($"the agent answered {(int)response.StatusCode}: {text}", []),
                    (int)response.StatusCode);
            }
            return JsonSerializer.Deserialize(text, type) ?? throw new AgentUnreachableException("the agent sent an empty answer");
        }
    }

    /// <summary>
    /// Streams newline-delimited JSON until cancelled; <paramref name="opened"/> runs once the agent has answered (from
    /// then on it keeps every event for this stream).
    /// </summary>
    public async IAsyncEnumerable<T> Stream<T>(string path, JsonTypeInfo<T> type,
        [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken cancel, Action? opened = null)
    {
        using var response = await Unwrapped(_http.GetAsync(path, HttpCompletionOption.ResponseHeadersRead, cancel)).ConfigureAwait(false);
        response.EnsureSuccessStatusCode();
        opened?.Invoke();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(cancel).ConfigureAwait(false));
        while (await reader.ReadLineAsync(cancel).ConfigureAwait(false) is { } line)
        {
            if (line.Length > 0 && JsonSerializer.Deserialize(line, type) is { } item)
            {
                yield return item;
            }
        }
    }

    /// <summary>A failed connection reaches callers as itself, not wrapped in the HTTP client's exception.</summary>
    private async Task<HttpResponseMessage> Unwrapped(Task<HttpResponseMessage> send)
    {
        try
        {
            return await send.ConfigureAwait(false);
        }
        catch (HttpRequestException e) when (e.InnerException is AgentUnreachableException unreachable)
        {
            throw unreachable;
        }
        catch (HttpRequestException) when (SafeFiles.EffectiveUser() != 0)
        {
            // The agent closes connections from anyone but root, even when the socket's mode let them connect.
            var info = SafeFiles.Inspect(SocketPath);
            throw new AgentUnreachableException($"permission denied on {SocketPath}: the agent's API is for root only (you are uid " +
                $"{SafeFiles.EffectiveUser()}; the socket is owned by uid {info.Owner}, mode {Convert.ToString((int)info.Mode, 8)})");
        }
    }

    public void Dispose() => _http.Dispose();
}

/// <summary>The agent refused a request; carries its error list.</summary>
public sealed class AgentRequestException(ErrorResponse error, int statusCode = 400) : Exception(error.Error)
{
    public ErrorResponse Response { get; } = error;

    /// <summary>The HTTP status the agent answered with (404: the agent has no such endpoint).</summary>
    public int StatusCode { get; } = statusCode;
}

/// <summary>The agent could not be reached or did not answer in the API's shape: one line for the user.</summary>
public sealed class AgentUnreachableException(string message) : Exception(message);
