using System.Text.Json;
using Membrane.Agent.Probes;
using Membrane.Api;
using Membrane.Policy.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Connections;
using Microsoft.AspNetCore.Connections.Features;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Routing;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Http;

/// <summary>The agent's API on a Unix socket (mode 0600; callers other than root are refused), on ASP.NET Core.</summary>
public static partial class ApiServer
{
    /// <summary>Kestrel on the agent's socket, with the request size limit and the root-only check.</summary>
    public static void Configure(WebApplicationBuilder builder, string socketPath)
    {
        ArgumentNullException.ThrowIfNull(builder);
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = MaxRequestBytes;
            k.ListenUnixSocket(socketPath, listen => listen.Use(next => async connection =>
            {
                if (!IsRoot(connection))
                {
                    connection.Abort(new ConnectionAbortedException("only root may use the membrane API"));
                    return;
                }
                await next(connection).ConfigureAwait(false);
            }));
        });
        // Malformed or missing bodies raise BadHttpRequestException, answered below with what was wrong.
        builder.Services.Configure<RouteHandlerOptions>(o => o.ThrowOnBadRequest = true);
        builder.Services.ConfigureHttpJsonOptions(o => o.SerializerOptions.TypeInfoResolverChain.Insert(0, AgentJsonContext.Default));
    }

    /// <summary>Error handling and the routes; the socket becomes root-only as soon as it listens.</summary>
    public static void Map(WebApplication app, AgentService agent)
    {
        ArgumentNullException.ThrowIfNull(app);
        ArgumentNullException.ThrowIfNull(agent);
        var log = app.Services.GetRequiredService<ILoggerFactory>().CreateLogger(typeof(ApiServer));
        app.Lifetime.ApplicationStarted.Register(() =>
        {
            File.SetUnixFileMode(agent.Options.SocketPath, UnixFileMode.UserRead | UnixFileMode.UserWrite);
            Listening(log, agent.Options.SocketPath, agent.Options.StateDirectory, agent.Options.PinDirectory);
        });
        app.Use(async (context, next) =>
        {
            if (context.Request.ContentLength > MaxRequestBytes)
            {
                // Answered before the body is read: a client that sent Expect: 100-continue never sends it.
                await Error(context, StatusCodes.Status413PayloadTooLarge, TooLarge, []).ConfigureAwait(false);
                return;
            }
            try
            {
                await next(context).ConfigureAwait(false);
            }
            catch (AgentInputException e)
            {
                await Error(context, StatusCodes.Status400BadRequest, e.Message, e.Errors.Select(Detail).ToList(), e.Node, e.WatchOn)
                    .ConfigureAwait(false);
            }
            catch (BadHttpRequestException e)
            {
                var message = e.StatusCode == StatusCodes.Status413PayloadTooLarge
                    ? TooLarge
                    : e.InnerException is { } inner ? $"{e.Message} {inner.Message}" : e.Message;
                await Error(context, e.StatusCode, message, []).ConfigureAwait(false);
            }
            catch (Grpc.Core.RpcException e) when (!context.RequestAborted.IsCancellationRequested)
            {
                // The cluster store did not answer: unavailable, not the agent's failure; nothing was changed.
                await Error(context, StatusCodes.Status503ServiceUnavailable,
                    $"the cluster store is unavailable ({e.Status.StatusCode}): {e.Status.Detail}", []).ConfigureAwait(false);
            }
            catch (OperationCanceledException) when (context.RequestAborted.IsCancellationRequested)
            {
                // The client went away: nobody to answer.
            }
#pragma warning disable CA1031 // the API's last line: whatever failed, the agent keeps serving and the caller learns what happened
            catch (Exception e)
#pragma warning restore CA1031
            {
                RequestFailed(log, e, context.Request.Method, context.Request.Path);
                await Error(context, StatusCodes.Status500InternalServerError, e.Message, []).ConfigureAwait(false);
            }
        });
        Routes(app, agent);
    }

    /// <summary>Serves <paramref name="agent"/> until <paramref name="stop"/> (benchmarks and tests host an agent in-process).</summary>
    public static async Task RunAsync(AgentService agent, CancellationToken stop)
    {
        ArgumentNullException.ThrowIfNull(agent);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        Configure(builder, PrepareSocket(agent.Options.SocketPath));
        await using var app = builder.Build();
        Map(app, agent);
        await app.StartAsync(stop).ConfigureAwait(false);
        try
        {
            await Task.Delay(Timeout.Infinite, stop).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
        }
        await app.StopAsync(CancellationToken.None).ConfigureAwait(false);
    }

    /// <summary>
    /// Cluster mode: waits (at most <paramref name="timeoutMs"/>, 0 = only read) until every node that is up has
    /// enforced <paramref name="revision"/>, and says which have not and what each lacks.
    /// </summary>
    private static async Task<ClusterEnforcementOutput> WaitForClusterAsync(Kvstore.EtcdConnection? etcd, long? revision, int? timeoutMs,
        CancellationToken cancel)
    {
        if (etcd is null)
        {
            throw new AgentInputException("the agent is not in cluster mode (no --etcd): a change is enforced when it returns");
        }
        if (revision is not > 0 || timeoutMs is < 0 or > 600_000)
        {
            throw new AgentInputException("give revision=N (N > 0) and timeoutMs between 0 and 600000");
        }
        var (enforced, nodes) = await Kvstore.ClusterEnforcement.WaitAsync(etcd, revision.Value,
            TimeSpan.FromMilliseconds(timeoutMs ?? 30_000), cancel).ConfigureAwait(false);
        return new ClusterEnforcementOutput(revision.Value, enforced, [.. nodes.Select(n => new NodeEnforcementOutput(n.Node, n.Enforced,
            n.Seen, n.Lacks))]);
    }

    private static ErrorDetail Detail(PolicyError e) => new(e.File, e.ObjectName, e.Path, e.Message, e.Line, e.Column);

    /// <summary>A socket file left by an agent that was killed would stop Kestrel from listening.</summary>
    public static string PrepareSocket(string socketPath)
    {
        if (File.Exists(socketPath))
        {
            File.Delete(socketPath);
        }
        return socketPath;
    }

    [LoggerMessage(EventId = 1, Level = LogLevel.Information,
        Message = "membrane agent: listening on {Socket}; state in {StateDirectory}; maps pinned in {PinDirectory}")]
    private static partial void Listening(ILogger logger, string socket, string stateDirectory, string pinDirectory);

    [LoggerMessage(EventId = 2, Level = LogLevel.Error, Message = "{Method} {Path} failed")]
    private static partial void RequestFailed(ILogger logger, Exception exception, string method, string path);

    private const long MaxRequestBytes = AgentDefaults.MaxRequestBytes;

    private static readonly string TooLarge = $"the request is larger than the {MaxRequestBytes:N0} bytes the agent accepts";

    private static async Task Error(HttpContext context, int status, string message, List<ErrorDetail> details, string? node = null,
        string? watchOn = null)
    {
        if (context.Response.HasStarted)
        {
            return;
        }
        context.Response.Clear();
        context.Response.StatusCode = status;
        await context.Response.WriteAsJsonAsync(new ErrorResponse(message, details, node, watchOn), AgentJsonContext.Default.ErrorResponse)
            .ConfigureAwait(false);
    }

    private static void Routes(WebApplication app, AgentService agent)
    {
        var json = AgentJsonContext.Default;
        var queries = agent.Queries;
        var prober = new Prober(agent);
        var v1 = app.MapGroup("/v1");
        v1.MapGet("/status", queries.Status); // never waits for the lock: status answers during a long change
        v1.MapPost("/apply", (ManifestRequest request, CancellationToken cancel) => agent.Objects.ApplyAsync(request, cancel: cancel));
        v1.MapPost("/delete", (ManifestRequest request, CancellationToken cancel) => agent.Objects.DeleteAsync(request, cancel));
        v1.MapPost("/reset", (CancellationToken cancel) => agent.Objects.ResetAsync(cancel));
        v1.MapGet("/policies", (CancellationToken cancel) => agent.ReadAsync(queries.Policies, cancel));
        v1.MapPost("/policies", (ManifestRequest request, CancellationToken cancel) =>
            agent.Objects.ApplyAsync(request, policiesOnly: true, cancel));
        v1.MapDelete("/policies", (string? name, bool? all, CancellationToken cancel) =>
            agent.Objects.DeletePoliciesAsync(name, all == true, cancel));
        v1.MapGet("/flows", (CancellationToken cancel) => agent.ReadAsync(() => queries.Flows(agent.Events.Flows), cancel));
        v1.MapPost("/policies/dry-run", (DryRunRequest request, CancellationToken cancel) => agent.DryRun.RunAsync(request, cancel));
        v1.MapPost("/trace", (TraceQuery query, CancellationToken cancel) => agent.ReadAsync(() => queries.Trace(query), cancel));
        v1.MapGet("/endpoints", (CancellationToken cancel) => agent.ReadAsync(queries.Endpoints, cancel));
        v1.MapGet("/endpoint", (string id, CancellationToken cancel) => agent.ReadAsync(() => queries.Endpoint(id), cancel));
        v1.MapPost("/endpoint/config", (EndpointConfigRequest request, CancellationToken cancel) =>
            agent.EndpointSettings.ConfigureAsync(request, cancel));
        v1.MapGet("/identities", (CancellationToken cancel) => agent.ReadAsync(queries.Identities, cancel));
        v1.MapGet("/bpf/policy", (string endpoint, CancellationToken cancel) => agent.ReadAsync(() => queries.BpfPolicy(endpoint), cancel));
        v1.MapGet("/bpf/ct", (string? endpoint, CancellationToken cancel) => agent.ReadAsync(() => queries.Conntrack(endpoint), cancel));
        v1.MapGet("/bpf/ct/usage", (string? endpoint, CancellationToken cancel) => agent.ReadAsync(() => queries.ConntrackUsage(endpoint),
            cancel));
        v1.MapDelete("/bpf/ct", (string? endpoint, CancellationToken cancel) => agent.ReadAsync(() => queries.FlushConntrack(endpoint),
            cancel));
        v1.MapGet("/bpf/ipcache", (CancellationToken cancel) => agent.ReadAsync(queries.IpCache, cancel));
        v1.MapGet("/cluster/enforcement", (long? revision, int? timeoutMs, CancellationToken cancel) =>
            WaitForClusterAsync(app.Services.GetService<Kvstore.EtcdConnection>(), revision, timeoutMs, cancel));
        v1.MapPost("/probe", (ProbeQuery query, CancellationToken cancel) => prober.ProbeAsync(query, cancel));
        v1.MapPost("/probe/watch", (ProbeWatchQuery query, CancellationToken cancel) => prober.WatchAsync(query, cancel));
        v1.MapPost("/matrix", (MatrixQuery query, CancellationToken cancel) => prober.MatrixAsync(query, cancel));
        if (agent.Cni is { } cniRequests)
        {
            // The CNI plugin's calls; an agent running the sandbox answers 404, which the plugin explains.
            var cni = v1.MapGroup("/cni");
            cni.MapPost("/add", (CniAttachmentRequest request, CancellationToken cancel) => cniRequests.AddAsync(request, cancel));
            cni.MapPost("/del", (CniAttachmentRequest request, CancellationToken cancel) => cniRequests.DelAsync(request, cancel));
            cni.MapPost("/check", (CniAttachmentRequest request, CancellationToken cancel) => cniRequests.CheckAsync(request, cancel));
            cni.MapPost("/gc", (CniGcRequest request, CancellationToken cancel) => cniRequests.GcAsync(request, cancel));
            cni.MapGet("/status", queries.Status);
        }
        v1.MapGet("/monitor", async (HttpContext context, string? type) =>
        {
            // Newline-delimited JSON, one event per line, until the client goes away.
            context.Response.ContentType = "application/x-ndjson";
            var events = agent.Events.Subscribe(verdicts: type is "verdict" or "all", context.RequestAborted);
            await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
            try
            {
                await foreach (var e in events.ReadAllAsync(context.RequestAborted).ConfigureAwait(false))
                {
                    if (type == "verdict" && e.Type != "verdict")
                    {
                        continue;
                    }
                    await context.Response.WriteAsync(JsonSerializer.Serialize(e, json.MonitorEvent).ReplaceLineEndings("") + "\n",
                        context.RequestAborted).ConfigureAwait(false);
                    await context.Response.Body.FlushAsync(context.RequestAborted).ConfigureAwait(false);
                }
            }
            catch (OperationCanceledException)
            {
            }
        });
    }

    /// <summary>The peer's uid from SO_PEERCRED (struct ucred: pid, uid, gid).</summary>
    private static bool IsRoot(ConnectionContext connection)
    {
        var socket = connection.Features.Get<IConnectionSocketFeature>()?.Socket;
        if (socket is null)
        {
            return false;
        }
        Span<byte> credentials = stackalloc byte[12];
        var length = socket.GetRawSocketOption(1 /* SOL_SOCKET */, 17 /* SO_PEERCRED */, credentials);
        return length == 12 && BitConverter.ToUInt32(credentials[4..8]) == 0;
    }
}
