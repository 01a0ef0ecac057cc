using System.Globalization;
using System.Net;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using Membrane.Api;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.FileProviders;
using Microsoft.Extensions.Logging;

namespace Membrane.Ui;

/// <summary>Where the page listens, the token it asks for, and the agent it reads from.</summary>
public sealed record UiOptions(IPEndPoint Listen, string Token, string AgentSocket);

[JsonSourceGenerationOptions(PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(FlowMap))]
[JsonSerializable(typeof(PodPolicyView))]
[JsonSerializable(typeof(UiError))]
internal sealed partial class UiJsonContext : JsonSerializerContext;

internal sealed record UiError(string Error);

/// <summary>
/// The web view (<c>membrane ui</c>): a read-only page over the agent's API. Every request needs the token printed at start
/// (as <c>?token=</c>, which also sets a same-site cookie for the page's own requests, or the <c>X-Membrane-Token</c>
/// header): the page shows what the root-only API socket protects. Nothing it serves changes the agent's state; the
/// only requests with a body compute a trace or send a probe's traffic.
/// </summary>
public static class UiServer
{
    public const string CookieName = "membrane-ui";
    public const string TokenHeader = "X-Membrane-Token";

    /// <summary>A fresh random token: 32 bytes, hex.</summary>
    public static string NewToken() => Convert.ToHexStringLower(RandomNumberGenerator.GetBytes(32));

    public static WebApplication Build(UiOptions options)
    {
        ArgumentNullException.ThrowIfNull(options);
        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        builder.WebHost.ConfigureKestrel(k => k.Listen(options.Listen));
        builder.Services.ConfigureHttpJsonOptions(json =>
        {
            json.SerializerOptions.TypeInfoResolverChain.Insert(0, UiJsonContext.Default);
            json.SerializerOptions.TypeInfoResolverChain.Insert(1, AgentJsonContext.Default);
        });
        var app = builder.Build();
        var expected = Encoding.UTF8.GetBytes(options.Token);
        app.Use(async (context, next) =>
        {
            var headers = context.Response.Headers;
            // Nothing from elsewhere, never framed, and the token in the URL is never sent on as a referrer.
            headers.ContentSecurityPolicy = "default-src 'self'; img-src 'self' data: blob:; style-src 'self'; frame-ancestors 'none'";
            headers["Referrer-Policy"] = "no-referrer";
            headers.XContentTypeOptions = "nosniff";
            headers.CacheControl = "no-store";
            var query = context.Request.Query["token"].FirstOrDefault();
            var supplied = query ?? context.Request.Headers[TokenHeader].FirstOrDefault() ?? context.Request.Cookies[CookieName];
            if (supplied is null || !CryptographicOperations.FixedTimeEquals(Encoding.UTF8.GetBytes(supplied), expected))
            {
                context.Response.StatusCode = StatusCodes.Status401Unauthorized;
                context.Response.ContentType = "text/plain; charset=utf-8";
                await context.Response.WriteAsync(supplied is null
                    ? "membrane ui: this page needs the token that 'membrane ui' printed (open the URL it printed)\n"
                    : "membrane ui: wrong token (open the URL 'membrane ui' printed)\n").ConfigureAwait(false);
                return;
            }
            if (query is not null)
            {
                context.Response.Cookies.Append(CookieName, supplied, new CookieOptions
                {
                    HttpOnly = true,
                    SameSite = SameSiteMode.Strict,
                    Path = "/",
                });
            }
            await next(context).ConfigureAwait(false);
        });
        var root = Path.Combine(AppContext.BaseDirectory, "ui");
        if (!File.Exists(Path.Combine(root, "index.html")))
        {
            throw new InvalidOperationException($"the page's files are missing from {root}: rebuild membrane (dotnet build)");
        }
        var files = new PhysicalFileProvider(root);
        app.UseDefaultFiles(new DefaultFilesOptions { FileProvider = files });
        app.UseStaticFiles(new StaticFileOptions { FileProvider = files });
        MapApi(app, options);
        return app;
    }

    private static void MapApi(WebApplication app, UiOptions options)
    {
        var api = app.MapGroup("/api");
        api.MapGet("/status", () => Agent(options, c => c.Get("v1/status", AgentJsonContext.Default.StatusResponse)));
        api.MapGet("/map", (HttpRequest request) => Agent(options, c => MapAsync(c, FilterOf(request.Query))));
        api.MapGet("/events", (HttpContext context) => EventsAsync(context, options));
        api.MapGet("/pod", (string name) => Agent(options, async c =>
        {
            var endpoint = await c.Get($"v1/endpoint?id={Uri.EscapeDataString(name)}", AgentJsonContext.Default.EndpointOutput)
                .ConfigureAwait(false);
            var map = await c.Get($"v1/bpf/policy?endpoint={Uri.EscapeDataString(name)}", AgentJsonContext.Default.BpfPolicyOutput)
                .ConfigureAwait(false);
            var status = await c.Get("v1/status", AgentJsonContext.Default.StatusResponse).ConfigureAwait(false);
            return PodPolicy.From(endpoint, map, status.PolicyAuditMode);
        }));
        api.MapPost("/trace", (TraceQuery query) => Agent(options, c => c.Post("v1/trace", query, AgentJsonContext.Default.TraceQuery,
            AgentJsonContext.Default.TraceOutput)));
        api.MapPost("/probe", (ProbeQuery query) => Agent(options, c => c.Post("v1/probe",
            query with { TimeoutMs = query.TimeoutMs ?? 1000 }, AgentJsonContext.Default.ProbeQuery,
            AgentJsonContext.Default.ProbeResult)));
    }

    /// <summary>observe's filters from the query string (since as a duration: 30s, 5m, 1h).</summary>
    public static FlowFilter FilterOf(IQueryCollection query)
    {
        ArgumentNullException.ThrowIfNull(query);
        string? Text(string name) => query[name].FirstOrDefault() is { Length: > 0 } value ? value : null;
        int? Number(string name) => Text(name) is { } value
            ? int.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out var n) ? n
                : throw new UiInputException($"{name} \"{value}\" is not a number")
            : null;
        var since = Text("since") is { } window
            ? Durations.TryParse(window, TimeSpan.FromDays(1), out var span) && span.Ticks > 0 ? span
                : throw new UiInputException($"since \"{window}\" is not a duration of at most a day (30s, 5m, 1h)")
            : (TimeSpan?)null;
        return new FlowFilter(Text("fromPod"), Text("toPod"), Text("namespace"), Text("verdict"), Text("protocol"), Number("icmpType"),
            Number("port"), since);
    }

    private static async Task<FlowMap> MapAsync(AgentClient client, FlowFilter filter)
    {
        var endpoints = await client.Get("v1/endpoints", AgentJsonContext.Default.ListEndpointOutput).ConfigureAwait(false);
        var flows = await client.Get("v1/flows", AgentJsonContext.Default.FlowsResponse).ConfigureAwait(false);
        return FlowGraph.Build(endpoints, flows, filter, DateTimeOffset.UtcNow);
    }

    /// <summary>Server-sent events: the map again whenever it changed, checked twice a second, until the page goes.</summary>
    private static async Task EventsAsync(HttpContext context, UiOptions options)
    {
        FlowFilter filter;
        try
        {
            filter = FilterOf(context.Request.Query);
        }
        catch (UiInputException e)
        {
            context.Response.StatusCode = StatusCodes.Status400BadRequest;
            await context.Response.WriteAsJsonAsync(new UiError(e.Message), UiJsonContext.Default.UiError).ConfigureAwait(false);
            return;
        }
        context.Response.ContentType = "text/event-stream";
        using var client = new AgentClient(options.AgentSocket);
        var last = "";
        var cancel = context.RequestAborted;
        while (!cancel.IsCancellationRequested)
        {
            string message;
            try
            {
                var map = await MapAsync(client, filter).ConfigureAwait(false);
                var json = JsonSerializer.Serialize(map, UiJsonContext.Default.FlowMap);
                // Unchanged but for the time it was made: nothing to send.
                var shape = json[..json.LastIndexOf("\"generated\"", StringComparison.Ordinal)];
                message = shape == last ? "" : $"event: map\ndata: {json}\n\n";
                last = shape;
            }
            catch (Exception e) when (e is AgentRequestException or AgentUnreachableException or HttpRequestException)
            {
                message = $"event: problem\ndata: {JsonSerializer.Serialize(new UiError(e.Message), UiJsonContext.Default.UiError)}\n\n";
                last = "";
            }
            try
            {
                if (message.Length > 0)
                {
                    await context.Response.WriteAsync(message, cancel).ConfigureAwait(false);
                    await context.Response.Body.FlushAsync(cancel).ConfigureAwait(false);
                }
                await Task.Delay(500, cancel).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                break;
            }
        }
    }

    /// <summary>One call to the agent; its refusals keep their status and message, an unreachable agent is 503.</summary>
    private static async Task<IResult> Agent<T>(UiOptions options, Func<AgentClient, Task<T>> call)
    {
        using var client = new AgentClient(options.AgentSocket);
        try
        {
            return Results.Ok(await call(client).ConfigureAwait(false));
        }
        catch (AgentRequestException e)
        {
            return Results.Json(new UiError(e.Message), UiJsonContext.Default.UiError, statusCode: e.StatusCode);
        }
        catch (AgentUnreachableException e)
        {
            return Results.Json(new UiError(e.Message), UiJsonContext.Default.UiError, statusCode: StatusCodes.Status503ServiceUnavailable);
        }
        catch (UiInputException e)
        {
            return Results.Json(new UiError(e.Message), UiJsonContext.Default.UiError, statusCode: StatusCodes.Status400BadRequest);
        }
    }
}

/// <summary>A request the page made that names something wrong (a filter that is no number or duration).</summary>
public sealed class UiInputException(string message) : Exception(message);
