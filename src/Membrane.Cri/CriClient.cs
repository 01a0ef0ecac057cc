using System.Net.Sockets;
using Grpc.Core;
using Grpc.Net.Client;
using Membrane.Cri.V1;

namespace Membrane.Cri;

/// <summary>A CRI runtime service client over the runtime's Unix socket (containerd: <c>.../containerd.sock</c>).</summary>
public sealed class CriClient : IDisposable
{
    private readonly GrpcChannel _channel;

    public CriClient(string socketPath)
    {
        ArgumentException.ThrowIfNullOrEmpty(socketPath);
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
                catch
                {
                    socket.Dispose();
                    throw;
                }
            },
        };
        // The authority is not used on a Unix socket; gRPC needs an http:// address for cleartext HTTP/2.
        _channel = GrpcChannel.ForAddress("http://localhost", new GrpcChannelOptions { HttpHandler = handler, DisposeHttpClient = true });
        Runtime = new RuntimeService.RuntimeServiceClient(_channel);
    }

    public string SocketPath { get; }

    public RuntimeService.RuntimeServiceClient Runtime { get; }

    /// <summary>
    /// The pod sandbox's namespace, name and labels, or null while the runtime does not list it yet (containerd adds
    /// a sandbox to its store only after the CNI ADD of its network returns).
    /// </summary>
    public async Task<(string Namespace, string Name, IReadOnlyDictionary<string, string> Labels)?> SandboxAsync(string sandboxId,
        CancellationToken cancel = default)
    {
        try
        {
            var status = await Runtime.PodSandboxStatusAsync(new PodSandboxStatusRequest { PodSandboxId = sandboxId },
                deadline: DateTime.UtcNow.AddSeconds(5), cancellationToken: cancel).ConfigureAwait(false);
            return (status.Status.Metadata.Namespace, status.Status.Metadata.Name, status.Status.Labels);
        }
        catch (RpcException e) when (e.StatusCode == StatusCode.NotFound)
        {
            return null;
        }
    }

    public void Dispose() => _channel.Dispose();
}
