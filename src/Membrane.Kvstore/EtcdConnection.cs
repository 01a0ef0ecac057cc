using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using dotnet_etcd;
using Etcdserverpb;
using Google.Protobuf;
using Grpc.Core;
using Grpc.Net.Client;
using Grpc.Net.Client.Balancer;
using Grpc.Net.Client.Configuration;
using Microsoft.Extensions.DependencyInjection;

namespace Membrane.Kvstore;

/// <summary>
/// One gRPC channel to an etcd cluster (every member's client URL; the channel fails over between them), the
/// dotnet-etcd client on it for reads, writes, transactions and leases, and the generated watch client on the same
/// channel (the library's own watch manager does not survive an etcd restart; <see cref="PrefixWatcher"/> does).
/// </summary>
/// <summary>
/// TLS to etcd: the CA that signed the members' certificates and, for etcd's client-certificate authentication, this
/// client's certificate and key (PEM files, as etcd's own <c>--trusted-ca-file</c>, <c>--cert-file</c>, <c>--key-file</c>).
/// </summary>
public sealed record EtcdTls(string CaFile, string? CertFile = null, string? KeyFile = null);

public sealed class EtcdConnection : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly ServiceProvider _services;

    public EtcdConnection(IReadOnlyList<Uri> endpoints, TimeSpan? requestTimeout = null, EtcdTls? tls = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        var scheme = tls is null ? Uri.UriSchemeHttp : Uri.UriSchemeHttps;
        if (endpoints.Count == 0 || endpoints.Any(e => e.Scheme != scheme || !e.IsAbsoluteUri))
        {
            throw new ArgumentException(tls is null ? "etcd endpoints must be http:// URLs (https:// needs the TLS files)"
                : "etcd endpoints must be https:// URLs with TLS", nameof(endpoints));
        }
        Endpoints = endpoints;
        RequestTimeout = requestTimeout ?? TimeSpan.FromSeconds(5);
        // Every member, picked in turn: a member that goes away costs one failed call, not the connection.
        var collection = new ServiceCollection();
        collection.AddSingleton<ResolverFactory>(new StaticResolverFactory(_ =>
            endpoints.Select(e => new BalancerAddress(e.Host, e.Port)).ToList()));
        _services = collection.BuildServiceProvider();
        _channel = GrpcChannel.ForAddress("static:///etcd", new GrpcChannelOptions
        {
            Credentials = tls is null ? ChannelCredentials.Insecure : ChannelCredentials.SecureSsl,
            HttpHandler = tls is null ? null : TlsHandler(tls),
            ServiceProvider = _services,
            ServiceConfig = new ServiceConfig
            {
                LoadBalancingConfigs = { new RoundRobinConfig() },
                // A call refused by a member that went away is tried again on the next one. Writes here are idempotent
                // or create-only transactions, so a retried write that had been applied is seen as such by the caller.
                MethodConfigs =
                {
                    new MethodConfig
                    {
                        Names = { MethodName.Default },
                        RetryPolicy = new RetryPolicy
                        {
                            MaxAttempts = 5,
                            InitialBackoff = TimeSpan.FromMilliseconds(50),
                            MaxBackoff = TimeSpan.FromMilliseconds(500),
                            BackoffMultiplier = 2,
                            RetryableStatusCodes = { StatusCode.Unavailable },
                        },
                    },
                    // Streams re-open themselves from the last revision or keep-alive they saw. A transport retry of a
                    // stream replays buffered writes and has failed inside Grpc.Net.Client (index out of range) when
                    // a member went away mid-stream, so they get none.
                    new MethodConfig
                    {
                        Names =
                        {
                            new MethodName { Service = "etcdserverpb.Watch", Method = "Watch" },
                            new MethodName { Service = "etcdserverpb.Lease", Method = "LeaseKeepAlive" },
                        },
                    },
                },
            },
        });
        Client = new EtcdClient(_channel.CreateCallInvoker());
        Watch = new Watch.WatchClient(_channel);
        Leases = new Lease.LeaseClient(_channel);
    }

    /// <summary>Parses <c>URL[,URL…]</c> as the agent's <c>--etcd</c> option takes it (https:// with TLS files).</summary>
    public static EtcdConnection FromOption(string urls, TimeSpan? requestTimeout = null, EtcdTls? tls = null)
    {
        ArgumentNullException.ThrowIfNull(urls);
        var endpoints = new List<Uri>();
        var scheme = tls is null ? Uri.UriSchemeHttp : Uri.UriSchemeHttps;
        foreach (var part in urls.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!Uri.TryCreate(part, UriKind.Absolute, out var uri) || uri.Scheme != scheme)
            {
                throw new ArgumentException($"\"{part}\" is not an etcd client URL ({scheme}://HOST:PORT" +
                    (tls is null ? "; https:// needs --etcd-ca" : "; TLS is configured") + ")", nameof(urls));
            }
            endpoints.Add(uri);
        }
        return new EtcdConnection(endpoints, requestTimeout, tls);
    }

    /// <summary>
    /// The members' certificates must chain to the given CA (and only to it) and name the address connected to; the
    /// client presents its certificate when one is given. Unreadable files are a clear error here, not at the first call.
    /// </summary>
    private static SocketsHttpHandler TlsHandler(EtcdTls tls)
    {
        X509Certificate2 ca;
        X509Certificate2? client = null;
        try
        {
            ca = X509Certificate2.CreateFromPem(File.ReadAllText(tls.CaFile));
            if (tls.CertFile is not null)
            {
                client = X509Certificate2.CreateFromPemFile(tls.CertFile, tls.KeyFile ?? throw new ArgumentException(
                    "a client certificate needs its key file", nameof(tls)));
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException or CryptographicException)
        {
            throw new ArgumentException($"etcd TLS files: {e.Message}", nameof(tls), e);
        }
        return new SocketsHttpHandler
        {
            EnableMultipleHttp2Connections = true,
            SslOptions = new SslClientAuthenticationOptions
            {
                ClientCertificates = client is null ? null : new X509CertificateCollection { client },
                RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                {
                    if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch)
                        || errors.HasFlag(SslPolicyErrors.RemoteCertificateNotAvailable))
                    {
                        return false;
                    }
                    using var chain = new X509Chain();
                    chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                    chain.ChainPolicy.CustomTrustStore.Add(ca);
                    chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                    using var presented = new X509Certificate2(certificate);
                    return chain.Build(presented);
                },
            },
        };
    }

    public IReadOnlyList<Uri> Endpoints { get; }

    /// <summary>How long one request may take before it counts as failed (the store is away or has no quorum).</summary>
    public TimeSpan RequestTimeout { get; }

    public EtcdClient Client { get; }

    public Watch.WatchClient Watch { get; }

    /// <summary>The generated lease client (keep-alive streams that <see cref="NodeSession"/> re-opens after failures).</summary>
    public Lease.LeaseClient Leases { get; }

    public DateTime Deadline => DateTime.UtcNow.Add(RequestTimeout);

    public static ByteString Bytes(string text) => ByteString.CopyFromUtf8(text);

    /// <summary>
    /// Runs one request with a deadline per attempt, and tries again (three attempts in all) when it timed out or no
    /// member answered: a request caught in a leader change is lost by etcd and times out, and the next one goes to
    /// the new leader. Callers send only idempotent writes or create-only transactions, so a timed-out write that
    /// was in fact applied is harmless when repeated. Past the attempts the store counts as unavailable.
    /// </summary>
    public async Task<T> CallAsync<T>(Func<DateTime, Task<T>> request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var action = typeof(T).Name.Replace("Response", "", StringComparison.Ordinal).ToLowerInvariant();
        for (var attempt = 1; ; attempt++)
        {
            var started = System.Diagnostics.Stopwatch.GetTimestamp();
            var success = false;
            try
            {
                var response = await request(Deadline).ConfigureAwait(false);
                success = true;
                return response;
            }
            // Cancelled without the caller asking: the connection under the call was torn down (a member went away).
            catch (RpcException e) when (attempt < 3 && !cancel.IsCancellationRequested
                                         && e.StatusCode is StatusCode.DeadlineExceeded or StatusCode.Unavailable or StatusCode.Cancelled)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(100 * attempt), cancel).ConfigureAwait(false);
            }
            finally
            {
                KvstoreMetrics.Operation(action, success, System.Diagnostics.Stopwatch.GetElapsedTime(started));
            }
        }
    }

    /// <summary>
    /// Whether <paramref name="e"/> is the end of a call that <paramref name="token"/> cancelled. Depending on where
    /// the call was when the token fired, gRPC reports it as an <see cref="OperationCanceledException"/>, an
    /// <see cref="RpcException"/> with status Cancelled, or one with status Unavailable ("the request was aborted",
    /// when a stream was being read); once the caller asked to stop, no failure of the call is news to it.
    /// </summary>
    public static bool CancelledBy(Exception e, CancellationToken token) =>
        token.IsCancellationRequested && e is OperationCanceledException or RpcException or IOException or HttpRequestException;

    public Task<PutResponse> PutAsync(string key, string value, long lease = 0, CancellationToken cancel = default) =>
        CallAsync(deadline => Client.PutAsync(new PutRequest { Key = Bytes(key), Value = Bytes(value), Lease = lease }, deadline: deadline,
            cancellationToken: cancel), cancel);

    /// <summary>The end of the key range that holds every key starting with <paramref name="prefix"/>.</summary>
    public static ByteString RangeEnd(string prefix)
    {
        ArgumentNullException.ThrowIfNull(prefix);
        var bytes = System.Text.Encoding.UTF8.GetBytes(prefix);
        for (var i = bytes.Length - 1; i >= 0; i--)
        {
            if (bytes[i] < 0xff)
            {
                bytes[i]++;
                return ByteString.CopyFrom(bytes, 0, i + 1);
            }
        }
        return ByteString.CopyFrom(0); // every key
    }

    /// <summary>Every key under a prefix, and the store revision the read saw.</summary>
    public async Task<(IReadOnlyList<Mvccpb.KeyValue> Items, long Revision)> ListAsync(string prefix, CancellationToken cancel = default)
    {
        var response = await CallAsync(deadline => Client.GetAsync(new RangeRequest { Key = Bytes(prefix), RangeEnd = RangeEnd(prefix) },
            deadline: deadline, cancellationToken: cancel), cancel).ConfigureAwait(false);
        return (response.Kvs, response.Header.Revision);
    }

    public async Task<long> GrantLeaseAsync(TimeSpan ttl, CancellationToken cancel = default)
    {
        var request = new LeaseGrantRequest { TTL = (long)Math.Ceiling(ttl.TotalSeconds) };
        var response = await CallAsync(deadline => Client.LeaseGrantAsync(request, deadline: deadline, cancellationToken: cancel), cancel)
            .ConfigureAwait(false);
        return response.ID;
    }

    public void Dispose()
    {
        _channel.Dispose();
        _services.Dispose();
    }
}
