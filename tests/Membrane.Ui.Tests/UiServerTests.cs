using System.Net;
using System.Net.Http.Json;

namespace Membrane.Ui.Tests;

/// <summary>The server on a real loopback port: the token, read-only routes, and an agent that is away.</summary>
public sealed class UiServerTests : IAsyncLifetime
{
    private const string Token = "test-token-0123456789abcdef";
    private Microsoft.AspNetCore.Builder.WebApplication? _app;
    private Uri _base = null!;

    public async Task InitializeAsync()
    {
        var port = FreePort();
        _app = UiServer.Build(new UiOptions(new IPEndPoint(IPAddress.Loopback, port), Token,
            Path.Combine(Path.GetTempPath(), $"membrane-ui-test-{Guid.NewGuid():N}.sock")));
        await _app.StartAsync();
        _base = new Uri($"http://127.0.0.1:{port}/");
    }

    public async Task DisposeAsync()
    {
        if (_app is not null)
        {
            await _app.DisposeAsync();
        }
    }

    private static int FreePort()
    {
        using var listener = new System.Net.Sockets.TcpListener(IPAddress.Loopback, 0);
        listener.Start();
        return ((IPEndPoint)listener.LocalEndpoint).Port;
    }

    [Theory]
    [InlineData("")]
    [InlineData("api/map")]
    [InlineData("app.js")]
    public async Task EveryRequestNeedsTheToken(string path)
    {
        using var http = new HttpClient { BaseAddress = _base };
        var response = await http.GetAsync(new Uri(path, UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, response.StatusCode);
        Assert.Contains("token", await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        var wrong = await http.GetAsync(new Uri($"{path}?token=not-the-token-at-all", UriKind.Relative));
        Assert.Equal(HttpStatusCode.Unauthorized, wrong.StatusCode);
    }

    [Fact]
    public async Task TheTokenInTheUrlBecomesASameSiteCookieAndThePageNeedsNothingFromElsewhere()
    {
        using var handler = new HttpClientHandler { CookieContainer = new CookieContainer() };
        using var http = new HttpClient(handler) { BaseAddress = _base };
        var page = await http.GetAsync(new Uri($"?token={Token}", UriKind.Relative));
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        var cookie = Assert.Single(page.Headers.GetValues("Set-Cookie"));
        Assert.Contains("samesite=strict", cookie, StringComparison.OrdinalIgnoreCase);
        Assert.Contains("httponly", cookie, StringComparison.OrdinalIgnoreCase);
        var policy = string.Join(";", page.Headers.GetValues("Content-Security-Policy"));
        Assert.Contains("default-src 'self'", policy, StringComparison.Ordinal);
        Assert.Equal("no-referrer", Assert.Single(page.Headers.GetValues("Referrer-Policy")));
        var html = await page.Content.ReadAsStringAsync();
        Assert.DoesNotContain("http://", html, StringComparison.Ordinal);
        Assert.DoesNotContain("https://", html, StringComparison.Ordinal);
        // The cookie carries the page's own requests; the library is served from here.
        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync(new Uri("vendor/cytoscape.min.js", UriKind.Relative))).StatusCode);
    }

    [Fact]
    public async Task NothingChangesStateAndAnAgentThatIsAwayIs503()
    {
        using var http = new HttpClient { BaseAddress = _base };
        http.DefaultRequestHeaders.Add(UiServer.TokenHeader, Token);
        var status = await http.GetAsync(new Uri("api/status", UriKind.Relative));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, status.StatusCode);
        Assert.Contains("cannot reach the agent", await status.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        foreach (var path in new[] { "api/map", "api/pod?name=a/b", "api/status" })
        {
            var post = await http.PostAsync(new Uri(path, UriKind.Relative), JsonContent.Create(new { }));
            Assert.Equal(HttpStatusCode.MethodNotAllowed, post.StatusCode);
        }
        Assert.Equal(HttpStatusCode.MethodNotAllowed, (await http.DeleteAsync(new Uri("api/trace", UriKind.Relative))).StatusCode);
        var bad = await http.GetAsync(new Uri("api/map?since=forever", UriKind.Relative));
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        var error = await bad.Content.ReadFromJsonAsync<System.Text.Json.JsonElement>();
        Assert.Contains("since \"forever\" is not a duration", error.GetProperty("error").GetString(), StringComparison.Ordinal);
    }
}
