using Membrane.Agent.Cluster;
using Membrane.Agent.Cni;
using Membrane.Agent.Endpoints;
using Membrane.Agent.Http;
using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Cri;
using Membrane.Kvstore;
using Microsoft.AspNetCore.Builder;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Console;
using Microsoft.Extensions.Options;
using Prometheus;

namespace Membrane.Agent.Hosting;

/// <summary>
/// The agent as a process on the .NET Generic Host: options, logging and the agent come from the container; the
/// host's lifetime turns SIGTERM and SIGINT into an orderly stop (the API closes, then the agent is disposed; the
/// pinned maps, pods and state stay, so a restarted agent adopts them and enforcement never stops).
/// </summary>
public static partial class AgentProcess
{
    /// <summary>
    /// Prometheus metrics on their own listener (never the API's routes over TCP); API request durations are measured
    /// on the API itself. A default address that is taken is logged and skipped; one the operator named is an error.
    /// </summary>
    private static KestrelMetricServer? StartMetrics(AgentOptions options, AgentService agent, WebApplication app)
    {
        if (options.MetricsAddress is not { } address)
        {
            return null;
        }
        // Not every library's .NET meter (internal diagnostics among them): AgentMetrics exports the store client's.
        Prometheus.Metrics.SuppressDefaultMetrics(new Prometheus.SuppressDefaultMetricOptions { SuppressMeters = true });
        app.UseRouting();
        app.UseHttpMetrics();
        _ = new Monitoring.AgentMetrics(agent);
        _ = new Monitoring.KvstoreMetricsExporter(); // lives as long as the process, as the metrics do
        var endpoint = System.Net.IPEndPoint.Parse(address);
        if (!System.Net.IPAddress.IsLoopback(endpoint.Address))
        {
            // Metrics name pods, policies and drop counts: on a non-loopback address anyone who can reach it reads them.
            MetricsExposed(app.Services.GetRequiredService<ILogger<AgentService>>(), address);
        }
        var server = new KestrelMetricServer(endpoint.Address.ToString(), endpoint.Port);
        try
        {
            server.Start();
            agent.Queries.MetricsAddress = address;
            return server;
        }
        catch (Exception e) when (e is IOException or InvalidOperationException or System.Net.Sockets.SocketException)
        {
            server.Dispose();
            if (options.MetricsAddressRequired)
            {
                Console.Error.WriteLine($"error: --metrics-address {address}: {e.Message}");
            }
            else
            {
                MetricsUnavailable(app.Services.GetRequiredService<ILogger<AgentService>>(),
                    $"metrics are not served on {address}: {e.Message}");
            }
            return null;
        }
    }

    [LoggerMessage(EventId = 50, Level = LogLevel.Warning,
        Message = "metrics are served on {Address}, not a loopback address: anyone who can reach it reads pod names, policies and " +
            "drop counts (no authentication); prefer 127.0.0.1 behind a scraper on the node")]
    private static partial void MetricsExposed(ILogger logger, string address);

    [LoggerMessage(EventId = 44, Level = LogLevel.Warning, Message = "{Reason} (give --metrics-address HOST:PORT or off)")]
    private static partial void MetricsUnavailable(ILogger logger, string reason);

    /// <summary>The cluster runs one routing mode: the first node sets it, a node started otherwise is refused.</summary>
    private static void AgreeOnRoutingMode(EtcdConnection etcd, AgentOptions options)
    {
        var mine = options.RoutingMode.ToString().ToLowerInvariant();
        var cluster = new ClusterSettings(etcd).AgreeAsync("routing-mode", mine).GetAwaiter().GetResult();
        if (cluster != mine)
        {
            throw new InvalidOperationException($"--routing-mode {mine}: the cluster runs in {cluster} mode (set by its first node, " +
                $"{ClusterSettings.Prefix}routing-mode); start this node with --routing-mode {cluster}");
        }
    }

    public static async Task<int> RunAsync(AgentOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.Logging.AddConsole(c => c.FormatterName = PlainConsoleFormatter.Name)
            .AddConsoleFormatter<PlainConsoleFormatter, ConsoleFormatterOptions>();
        // Every log line goes to stderr: stdout stays free for whoever runs the agent.
        builder.Services.Configure<ConsoleLoggerOptions>(c => c.LogToStandardErrorThreshold = LogLevel.Trace);
        builder.Logging.SetMinimumLevel(LogLevel.Information);
        builder.Logging.AddFilter("Microsoft", LogLevel.Warning);
        // Under systemd (Type=notify): READY=1 once the API answers, STOPPING=1 on the way down; elsewhere nothing.
        builder.Services.AddSystemd();
        builder.Services.AddSingleton(Options.Create(options));
        // The two seams: how endpoints' interfaces come to exist, and where the desired objects live.
        if (options.Runtime == AgentRuntime.Cni)
        {
            builder.Services.AddSingleton<CniAttachments>();
            builder.Services.AddSingleton<IEndpointRuntime>(services => new CniRuntime(
                services.GetRequiredService<IOptions<AgentOptions>>().Value, services.GetRequiredService<CniAttachments>()));
            if (options.CriSocket is { } criSocket)
            {
                builder.Services.AddSingleton(_ => new CriClient(criSocket));
                builder.Services.AddHostedService<RuntimeLabelPoller>();
            }
        }
        else
        {
            builder.Services.AddSingleton<IEndpointRuntime>(services =>
                new SandboxRuntime(services.GetRequiredService<IOptions<AgentOptions>>().Value));
        }
        if (options.Etcd is { } etcd)
        {
            // Cluster mode: the objects live in etcd, shared by every agent; a watch brings other nodes' changes here.
            builder.Services.AddSingleton(_ => EtcdConnection.FromOption(etcd, tls: options.EtcdTls));
            builder.Services.AddSingleton(services => new ClusterObjects(services.GetRequiredService<EtcdConnection>()));
            builder.Services.AddSingleton<ClusterObjectStore>();
            builder.Services.AddSingleton(services =>
            {
                var session = new NodeSession(services.GetRequiredService<EtcdConnection>(), options.LeaseTimeToLive);
                try
                {
                    session.StartAsync().GetAwaiter().GetResult();
                }
                catch (Grpc.Core.RpcException e)
                {
                    throw new InvalidOperationException($"cannot reach the cluster store at {etcd} ({e.Status.StatusCode}): start " +
                        "etcd or fix --etcd", e);
                }
                AgreeOnRoutingMode(services.GetRequiredService<EtcdConnection>(), options);
                return session;
            });
            builder.Services.AddSingleton(services => new ClusterIdentities(services.GetRequiredService<EtcdConnection>(), options.Node!,
                services.GetRequiredService<NodeSession>()));
            builder.Services.AddSingleton<IObjectStore>(services => services.GetRequiredService<ClusterObjectStore>());
            builder.Services.AddHostedService<ClusterObjectWatch>();
            builder.Services.AddSingleton(new ClusterHealth(options));
            builder.Services.AddHostedService<ClusterNetwork>();
        }
        else
        {
            builder.Services.AddSingleton<IObjectStore, LocalObjectStore>();
        }
        builder.Services.AddSingleton(services => AgentService.Start(
            services.GetRequiredService<IOptions<AgentOptions>>().Value, services.GetRequiredService<IEndpointRuntime>(),
            services.GetRequiredService<IObjectStore>(), services.GetRequiredService<ILoggerFactory>(),
            services.GetService<CniAttachments>(), services.GetService<ClusterIdentities>()));
        ApiServer.Configure(builder, options.SocketPath);
        await using var app = builder.Build();
        AgentService agent;
        try
        {
            agent = app.Services.GetRequiredService<AgentService>();
        }
        catch (InvalidOperationException e)
        {
            // Preflight and restore refusals: the message says what to do.
            await Console.Error.WriteLineAsync($"error: {e.Message}").ConfigureAwait(false);
            return AgentCommandLine.Error;
        }
        if (app.Services.GetService<ClusterHealth>() is { } health)
        {
            agent.Queries.Cluster = _ => health.Status(agent.Cluster?.Enforcement);
        }
        ApiServer.PrepareSocket(options.SocketPath);
        using var metrics = StartMetrics(options, agent, app);
        if (options.MetricsAddressRequired && metrics is null)
        {
            return AgentCommandLine.Error;
        }
        ApiServer.Map(app, agent);
        // Taken before the host runs: RunAsync disposes the host, and its services with it, when it returns.
        var loops = app.Services.GetServices<IHostedService>().OfType<BackgroundService>().ToList();
        await app.RunAsync().ConfigureAwait(false);
        // Background loops are supervised and never fault; if one did anyway, the host stopped because of it: that is
        // a failure, and the exit status says so (a service manager restarts on it).
        if (loops.FirstOrDefault(s => s.ExecuteTask is { IsFaulted: true }) is { } faulted)
        {
            await Console.Error.WriteLineAsync($"error: {faulted.GetType().Name} failed: " +
                $"{faulted.ExecuteTask!.Exception?.GetBaseException().Message}").ConfigureAwait(false);
            return AgentCommandLine.Error;
        }
        return AgentCommandLine.Success;
    }
}
