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
public sealed class EtcdConnection : IDisposable
{
    private readonly GrpcChannel _channel;
    private readonly ServiceProvider _services;

    public EtcdConnection(IReadOnlyList<Uri> endpoints, TimeSpan? requestTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(endpoints);
        if (endpoints.Count == 0 || endpoints.Any(e => e.Scheme != Uri.UriSchemeHttp || !e.IsAbsoluteUri))
        {
            throw new ArgumentException("etcd endpoints must be http:// URLs (TLS is not configured)", nameof(endpoints));
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
            Credentials = ChannelCredentials.Insecure,
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
                },
            },
        });
        Client = new EtcdClient(_channel.CreateCallInvoker());
        Watch = new Watch.WatchClient(_channel);
        Leases = new Lease.LeaseClient(_channel);
    }

    /// <summary>Parses <c>URL[,URL…]</c> as the agent's <c>--etcd</c> option takes it.</summary>
    public static EtcdConnection FromOption(string urls, TimeSpan? requestTimeout = null)
    {
        ArgumentNullException.ThrowIfNull(urls);
        var endpoints = new List<Uri>();
        foreach (var part in urls.Split(',', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries))
        {
            if (!Uri.TryCreate(part, UriKind.Absolute, out var uri) || uri.Scheme != Uri.UriSchemeHttp)
            {
                throw new ArgumentException($"\"{part}\" is not an etcd client URL (http://HOST:PORT)", nameof(urls));
            }
            endpoints.Add(uri);
        }
        return new EtcdConnection(endpoints, requestTimeout);
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
        for (var attempt = 1; ; attempt++)
        {
            try
            {
                return await request(Deadline).ConfigureAwait(false);
            }
            // Cancelled without the caller asking: the connection under the call was torn down (a member went away).
            catch (RpcException e) when (attempt < 3 && !cancel.IsCancellationRequested
                                         && e.StatusCode is StatusCode.DeadlineExceeded or StatusCode.Unavailable or StatusCode.Cancelled)
            {
                await Task.Delay(TimeSpan.FromMilliseconds(100 * attempt), cancel).ConfigureAwait(false);
            }
        }
    }

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
