using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Membrane.Api;

namespace Membrane.Agent.Tests;

/// <summary>
/// Raw requests an API client can send: every bad one gets a 4xx with a message, nothing changes, and the agent
/// keeps answering. The hostile YAML here used to overflow the agent's stack or keep a core busy for 20 minutes.
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class AgentInputTests
{
    private readonly SandboxFixture _s;

    public AgentInputTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private static HttpClient Raw() => new(new SocketsHttpHandler
    {
        ConnectCallback = async (_, cancel) =>
        {
            var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
            await socket.ConnectAsync(new UnixDomainSocketEndPoint(SandboxFixture.Socket), cancel);
            return new NetworkStream(socket, ownsSocket: true);
        },
    })
    { BaseAddress = new Uri("http://membrane/"), Timeout = TimeSpan.FromSeconds(60) };

    private static async Task<(HttpStatusCode Status, string Error)> Post(HttpClient http, string path, string body)
    {
        // Expect: 100-continue, as the CLI sends it: a body the agent refuses is answered before it is sent.
        using var request = new HttpRequestMessage(HttpMethod.Post, path)
        {
            Content = new StringContent(body, Encoding.UTF8,
            "application/json")
        };
        request.Headers.ExpectContinue = true;
        using var response = await http.SendAsync(request);
        var text = await response.Content.ReadAsStringAsync();
        var error = text.Length == 0 ? "" : JsonSerializer.Deserialize(text, AgentJsonContext.Default.ErrorResponse)?.Error ?? "";
        return (response.StatusCode, error);
    }

    private long Revision() =>
        JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out, AgentJsonContext.Default.StatusResponse)!.Revision;

    [Fact]
    public async Task MalformedAndIncompleteRequestsGetA400WithAMessage()
    {
        var before = Revision();
        using var http = Raw();
        foreach (var path in new[] { "v1/apply", "v1/delete", "v1/policies" })
        {
            foreach (var body in new[] { "{}", """{"yaml": null}""" })
            {
                var (status, error) = await Post(http, path, body);
                Assert.True(status == HttpStatusCode.BadRequest, $"{path} {body}: {status}");
                Assert.Contains("the request has no \"yaml\"", error, StringComparison.Ordinal);
            }
            var malformed = await Post(http, path, "{\"yaml\": ");
            Assert.Equal(HttpStatusCode.BadRequest, malformed.Status);
            Assert.Contains("Failed to read parameter", malformed.Error, StringComparison.Ordinal);
        }
        var trace = await Post(http, "v1/trace", "{}");
        Assert.Equal(HttpStatusCode.BadRequest, trace.Status);
        Assert.Contains("--from and --to are required", trace.Error, StringComparison.Ordinal);

        var matrix = await Post(http, "v1/matrix", """{"timeoutMs": -5}""");
        Assert.Equal(HttpStatusCode.BadRequest, matrix.Status);
        Assert.Contains("timeout -5 ms is out of range", matrix.Error, StringComparison.Ordinal);
        var probe = await Post(http, "v1/probe",
            """{"from": "e2e-a/client", "to": "e2e-a/server", "protocol": "tcp", "port": 80, "timeoutMs": -1}""");
        Assert.Equal(HttpStatusCode.BadRequest, probe.Status);
        Assert.Contains("timeout -1 ms is out of range", probe.Error, StringComparison.Ordinal);

        Assert.Equal(before, Revision());
    }

    [Fact]
    public async Task HostileYamlAndHugeBodiesAreRefusedQuicklyAndTheAgentStaysUp()
    {
        var before = Revision();
        using var http = Raw();
        var laughs = new StringBuilder("apiVersion: v1\nkind: List\nx0: &a0 {apiVersion: v1, kind: Namespace, metadata: {name: n}}\n");
        for (var i = 1; i <= 9; i++)
        {
            laughs.Append($"x{i}: &a{i} [{string.Join(", ", Enumerable.Repeat($"*a{i - 1}", 10))}]\n");
        }
        laughs.Append("items: *a9\n");
        foreach (var (yaml, expected) in new[]
        {
            ("items: &a [ {apiVersion: v1, kind: List, items: *a} ]\nkind: List\napiVersion: v1\n", "(a cycle)"),
            ("a: " + new string('[', 100_000) + new string(']', 100_000), "nesting deeper than 64"),
            (laughs.ToString(), "once its aliases are expanded"),
        })
        {
            var body = JsonSerializer.Serialize(new ManifestRequest(yaml, "hostile.yaml"), AgentJsonContext.Default.ManifestRequest);
            var (status, _) = await Post(http, "v1/apply", body);
            Assert.Equal(HttpStatusCode.BadRequest, status);
            using var response = await http.PostAsync("v1/policies", new StringContent(body, Encoding.UTF8, "application/json"));
            Assert.Contains(expected, await response.Content.ReadAsStringAsync(), StringComparison.Ordinal);
        }

        var huge = JsonSerializer.Serialize(new ManifestRequest(new string('#', 20 * 1024 * 1024), "huge.yaml"),
            AgentJsonContext.Default.ManifestRequest);
        var tooBig = await Post(http, "v1/apply", huge);
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, tooBig.Status);
        Assert.Contains("larger than the 16,777,216 bytes", tooBig.Error, StringComparison.Ordinal);

        // The CLI refuses a 50 MB file itself, with exit status 1 and a message (it used to die with exit 134).
        var file = Path.Combine(Path.GetTempPath(), $"{SandboxFixture.Prefix}-huge-{Guid.NewGuid():N}.yaml");
        try
        {
            await File.WriteAllTextAsync(file, "# " + new string('x', 50 * 1024 * 1024));
            var cli = _s.Cli("apply", "-f", file);
            Assert.Equal(1, cli.Code);
            Assert.Contains("a file may have", cli.Err, StringComparison.Ordinal);
        }
        finally
        {
            File.Delete(file);
        }
        Assert.Equal(before, Revision());
    }
}
