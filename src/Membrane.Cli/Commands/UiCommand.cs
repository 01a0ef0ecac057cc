using System.CommandLine;
using System.Net;
using Membrane.Api;
using Membrane.Ui;

namespace Membrane.Cli.Commands;

/// <summary>
/// <c>membrane ui</c>: serves the web view of the agent's flows and policies (read-only) on a local address until stopped,
/// behind a random token printed with its URL.
/// </summary>
public static class UiCommand
{
    public const string DefaultListen = "127.0.0.1:9971";

    public static Command Create(CliOutput output)
    {
        var listen = new Option<string>("--listen")
        {
            Description = $"HOST:PORT to serve the page on (default {DefaultListen}; a non-loopback address shows pod names, " +
                "policies and flows to whoever reaches it and holds the token)",
            DefaultValueFactory = _ => DefaultListen,
        };
        var token = new Option<string?>("--token")
        {
            Description = "The token the page asks for (default: a new random one, printed with the URL); at least 16 characters",
        };
        var command = new Command("ui", "Serve the web view: who may talk to whom, what was dropped and why (read-only; Ctrl-C stops " +
            "it). Exit 0 when stopped, 2 on an error")
        {
            listen, token,
        };
        command.SetAction(async (parse, cancel) =>
        {
            var text = parse.GetValue(listen)!;
            if (!IPEndPoint.TryParse(text, out var endpoint) || endpoint.Port == 0)
            {
                throw new CliException($"--listen \"{text}\" is not HOST:PORT with an IP address (127.0.0.1:9971)");
            }
            var secret = parse.GetValue(token) ?? UiServer.NewToken();
            if (secret.Length < 16 || secret.Any(c => !char.IsAsciiLetterOrDigit(c) && c is not '-' and not '_'))
            {
                throw new CliException("--token must be at least 16 letters, digits, '-' or '_'");
            }
            if (!IPAddress.IsLoopback(endpoint.Address))
            {
                await output.Err.WriteLineAsync($"warning: --listen {endpoint} is not a loopback address: anyone who reaches it and " +
                    "holds the token reads pod names, policies and flows").ConfigureAwait(false);
            }
            using var client = AgentClient.FromEnvironment();
            await using var app = UiServer.Build(new UiOptions(endpoint, secret, client.SocketPath));
            await app.StartAsync(cancel).ConfigureAwait(false);
            var host = endpoint.Address.Equals(IPAddress.Any) ? "127.0.0.1" : endpoint.Address.ToString();
            var url = endpoint.AddressFamily == System.Net.Sockets.AddressFamily.InterNetworkV6 ? $"http://[{host}]:{endpoint.Port}/"
                : $"http://{host}:{endpoint.Port}/";
            await output.Out.WriteLineAsync($"membrane ui: {url}?token={secret}").ConfigureAwait(false);
            await output.Out.FlushAsync(cancel).ConfigureAwait(false);
            try
            {
                await Task.Delay(Timeout.Infinite, cancel).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
            }
            await app.StopAsync(CancellationToken.None).ConfigureAwait(false);
            return CliApp.Success;
        });
        return command;
    }
}
