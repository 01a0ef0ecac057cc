using System.Buffers.Binary;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Cli;
using Membrane.Datapath.Tests;

namespace Membrane.Agent.Tests;

/// <summary>
/// Policy and label changes while traffic runs, with the policy engine's answer as the oracle: flows that every
/// state in the run allows must lose nothing, flows that every state denies must get no answer. Changes:
/// MEMBRANE_SOAK_CHANGES (default 1,000).
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed class SoakTests
{
    private readonly SandboxFixture _s;

    public SoakTests(SandboxFixture sandbox)
    {
        _s = sandbox;
        _s.Reset();
    }

    private static string Cnp(string name, string spec) => SandboxFixture.Cnp(name, spec);

    /// <summary>
    /// Echo requests, each a new flow (its own identifier), so every one meets policy rather than riding on
    /// conntrack; counts the requests sent and the replies received.
    /// </summary>
    private sealed class EchoStream : IDisposable
    {
        private readonly Socket _socket;
        private readonly IPAddress _target;
        private readonly ushort _base;
        private readonly HashSet<ushort> _answered = [];
        private readonly Task _receiver;
        private readonly CancellationTokenSource _stop = new();

        public EchoStream(string netns, IPAddress target, ushort identifierBase)
        {
            _socket = NetworkNamespace.Run(netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Raw, ProtocolType.Icmp));
            // A raw socket sees every ICMP message of the namespace: a large buffer and a thread of its own, so
            // no reply is lost in the test itself (an overflowing socket would look like a drop).
            _socket.ReceiveBufferSize = 8 << 20;
            _socket.ReceiveTimeout = 200;
            _target = target;
            _base = identifierBase;
            _receiver = Task.Factory.StartNew(Receive, TaskCreationOptions.LongRunning);
        }

        public int Sent { get; private set; }

        public int Answered
        {
            get
            {
                lock (_answered)
                {
                    return _answered.Count;
                }
            }
        }

        public void SendOne()
        {
            if (Sent >= 60_000)
            {
                return; // identifiers are 16 bits: stop before they repeat
            }
            var id = (ushort)(_base + Sent);
            var packet = new byte[16];
            packet[0] = 8;
            BinaryPrimitives.WriteUInt16BigEndian(packet.AsSpan(4), id);
            BinaryPrimitives.WriteUInt16BigEndian(packet.AsSpan(2), InternetChecksum.Of(packet));
            _socket.SendTo(packet, new IPEndPoint(_target, 0));
            Sent++;
        }

        private void Receive()
        {
            var buffer = new byte[1500];
            while (!_stop.IsCancellationRequested)
            {
                int n;
                try
                {
                    n = _socket.Receive(buffer);
                }
                catch (SocketException e) when (e.SocketErrorCode == SocketError.TimedOut)
                {
                    continue;
                }
                catch (Exception e) when (e is SocketException or ObjectDisposedException)
                {
                    return;
                }
                var header = (buffer[0] & 0x0f) * 4;
                if (n >= header + 8 && buffer[header] == 0)
                {
                    var id = BinaryPrimitives.ReadUInt16BigEndian(buffer.AsSpan(header + 4));
                    lock (_answered)
                    {
                        _answered.Add(id);
                    }
                }
            }
        }

        /// <summary>Waits (with a deadline) until every request has had time to be answered.</summary>
        public void Drain(Func<bool> done)
        {
            var deadline = DateTime.UtcNow.AddSeconds(5);
            while (!done() && DateTime.UtcNow < deadline)
            {
                Thread.Sleep(20);
            }
        }

        public void Dispose()
        {
            _stop.Cancel();
            _receiver.Wait(TimeSpan.FromSeconds(5));
            _socket.Dispose();
            _stop.Dispose();
        }
    }

    [Fact]
    public async Task AThousandChangesUnderLiveTrafficLoseNothingAllowedAndLetNothingDeniedThrough()
    {
        var changes = int.TryParse(Environment.GetEnvironmentVariable("MEMBRANE_SOAK_CHANGES"), out var c) ? c : 1000;
        // Every state of the run: the server accepts echo and TCP 80 from the client, nothing from "other"; churn
        // policies open other ports to other pods, and labels of the client and of "other" change.
        var stable = Cnp("soak-stable", """
            endpointSelector: {matchLabels: {app: server}}
            ingress:
            - fromEndpoints: [{matchLabels: {app: client}}]
              icmps: [{fields: [{type: 8}]}]
            - fromEndpoints: [{matchLabels: {app: client}}]
              toPorts: [{ports: [{port: "80", protocol: TCP}]}]
            """);
        Assert.Equal(0, _s.Apply(stable, "import").Code);
        EndpointOutput client = _s.Endpoint("e2e-a/client"), server = _s.Endpoint("e2e-a/server"), other = _s.Endpoint("e2e-b/other");
        var target = IPAddress.Parse(server.IPv4!);
        using var allowed = new EchoStream(client.Netns, target, 1);
        using var denied = new EchoStream(other.Netns, target, 1);
        using var tcp = NetworkNamespace.Run(client.Netns, () => new Socket(AddressFamily.InterNetwork, SocketType.Stream,
            ProtocolType.Tcp));
        tcp.ReceiveTimeout = 5000;
        tcp.Connect(target, 80);

        using var api = new AgentClient(SandboxFixture.Socket);
        // Traffic runs throughout, not between changes: a new echo flow of each kind about every millisecond, so a
        // window inside a change (maps half-written, ipcache and policy out of step) shows as a loss or an answer.
        using var stopTraffic = new CancellationTokenSource();
        var traffic = Task.Factory.StartNew(() =>
        {
            while (!stopTraffic.IsCancellationRequested)
            {
                allowed.SendOne();
                denied.SendOne();
                Thread.Sleep(1);
            }
        }, TaskCreationOptions.LongRunning);
        var tcpRounds = 0;
        for (var i = 0; i < changes; i++)
        {
            var yaml = (i % 4) switch
            {
                0 => Cnp($"soak-churn-{i % 16}",
                    $"endpointSelector: {{matchLabels: {{app: server}}}}\ningress: [{{fromEndpoints: [{{matchLabels: {{app: other}}}}], " +
                    $"toPorts: [{{ports: [{{port: \"{9000 + i % 50}\", protocol: TCP}}]}}]}}]"),
                1 => $"apiVersion: v1\nkind: Pod\nmetadata: {{name: client, namespace: e2e-a, labels: {{app: client, round: " +
                    $"\"r{i % 7}\"}}}}\nspec: {{containers: [{{name: c, image: busybox}}]}}\n",
                2 => $"apiVersion: v1\nkind: Pod\nmetadata: {{name: other, namespace: e2e-b, labels: {{app: other, round: " +
                    $"\"r{i % 5}\"}}}}\nspec: {{containers: [{{name: o, image: busybox, ports: [{{containerPort: 80}}]}}]}}\n",
                _ => Cnp("soak-denyish",
                    $"endpointSelector: {{matchLabels: {{app: server}}}}\ningressDeny: [{{fromEndpoints: [{{matchLabels: {{app: " +
                    $"other}}}}], toPorts: [{{ports: [{{port: \"{7000 + i % 30}\", protocol: TCP}}]}}]}}]"),
            };
            await api.Post(i % 4 is 0 or 3 ? "v1/policies" : "v1/apply", new ManifestRequest(yaml, "soak.yaml"),
                AgentJsonContext.Default.ManifestRequest, AgentJsonContext.Default.ApplyResponse);
            if (i % 10 == 0)
            {
                // The established TCP connection keeps working through every change.
                var payload = BitConverter.GetBytes(i);
                tcp.Send(payload);
                var echoed = new byte[payload.Length];
                var got = 0;
                while (got < echoed.Length)
                {
                    got += tcp.Receive(echoed, got, echoed.Length - got, SocketFlags.None);
                }
                Assert.Equal(payload, echoed);
                tcpRounds++;
            }
        }
        stopTraffic.Cancel();
        await traffic;
        allowed.Drain(() => allowed.Answered == allowed.Sent);
        denied.Drain(() => false); // the full deadline: a late answer would still count

        var drops = System.Text.Json.JsonSerializer.Deserialize(_s.CliOk("status", "-o", "json").Out,
            AgentJsonContext.Default.StatusResponse)!.Drops
            .Where(d => d.Value > 0).Select(d => $"{d.Key} {d.Value}");
        Assert.True(allowed.Answered == allowed.Sent,
            $"allowed echo: {allowed.Sent - allowed.Answered} of {allowed.Sent} lost during {changes} changes; drops since the agent " +
                $"started: {string.Join(", ", drops)}");
        Assert.True(denied.Answered == 0, $"denied echo: {denied.Answered} of {denied.Sent} answered during {changes} changes");
        Assert.Equal(changes / 10 + (changes % 10 == 0 ? 0 : 1), tcpRounds);
    }
}
