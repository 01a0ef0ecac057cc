using System.Buffers.Binary;
using System.Diagnostics;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Endpoints;
using Membrane.Agent.Sandbox;
using Membrane.Api;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;

namespace Membrane.Agent.Probes;

/// <summary>
/// Sends real traffic from inside a pod's network namespace: sockets are opened in the source pod's namespace,
/// then used from ordinary async code. TCP: a connection (a refusal also proves the packets passed); UDP: a datagram
/// to the pod's echo server and its echo; ICMP echo: a request and its reply; any other ICMP type: the message is
/// sent and looked for in the destination pod's namespace.
/// </summary>
public sealed class Prober(IPodLookup pods)
{
    public const int DefaultTimeoutMs = 1000;

    /// <summary>Longest a probe may wait for its answer: no request holds a socket longer.</summary>
    public const int MaxTimeoutMs = 60_000;

    private static TimeSpan Timeout(int? milliseconds, int fallback) => milliseconds switch
    {
        null => TimeSpan.FromMilliseconds(fallback),
        >= 1 and <= MaxTimeoutMs => TimeSpan.FromMilliseconds(milliseconds.Value),
        _ => throw new AgentInputException($"timeout {milliseconds} ms is out of range: give 1 to {MaxTimeoutMs} ms"),
    };

    public async Task<ProbeResult> ProbeAsync(ProbeQuery query, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        var request = AgentInputException.Flow(
            query.From, query.To, query.Protocol, query.Port, query.IcmpType, query.IcmpCode, query.Family);
        var source = await pods.FindPodAsync(query.From, cancel).ConfigureAwait(false);
        if (source is null)
        {
            var elsewhere = await pods.FindPeerAsync(query.From, cancel).ConfigureAwait(false);
            throw new AgentInputException(elsewhere is not null
                ? $"{query.From} runs on node {elsewhere.Pod.NodeName}: probe from that node's agent"
                : $"no pod {query.From}")
            { Node = elsewhere?.Pod.NodeName };
        }
        // The destination may run on another node (cluster mode): it is reached by its address.
        var local = await pods.FindPodAsync(query.To, cancel).ConfigureAwait(false);
        var peer = local?.Endpoint ?? await pods.FindPeerAsync(query.To, cancel).ConfigureAwait(false)
            ?? throw new AgentInputException($"no pod {query.To}");
        if (request.Protocol == IpProtocol.Sctp)
        {
            throw new AgentInputException("SCTP probes are unsupported: this kernel has no SCTP (CONFIG_IP_SCTP is not set); SCTP " +
                "policy is still enforced and tested on crafted packets");
        }
        var timeout = Timeout(query.TimeoutMs, DefaultTimeoutMs);
        var target = peer.Address(request.Family)
            ?? throw new AgentInputException($"{query.To} has no {request.Family} address" + (local is null
                ? $" here yet (node {peer.Pod.NodeName} has not published it)" : ""));
        var netns = source.Value.Record.Netns;
        var watch = Stopwatch.StartNew();
        var oneWay = request.IsIcmp && !(request.IcmpType is 8 or 128 && request.IcmpCode is null or 0);
        if (oneWay && local is null)
        {
            // The message is looked for in the destination pod, on its node: the CLI has that node watch, and this one send.
            var id = query.MessageId is { } asked ? (asked is >= 1 and <= 65535 ? (ushort)asked
                    : throw new AgentInputException($"messageId {asked} is out of range: give 1 to 65535"))
                : throw new AgentInputException($"{query.To} runs on node {peer.Pod.NodeName}: a type {request.IcmpType} message is " +
                    "watched for there while this node sends it")
                { WatchOn = peer.Pod.NodeName };
            var sent = await SendRepeatedly(netns, target, request, id, timeout, cancel).ConfigureAwait(false);
            return new ProbeResult(query.From, query.To, IpProtocol.Name(request.Protocol).ToLowerInvariant(), null, request.IcmpType,
                request.Family == AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4", "sent", $"{sent} message(s) sent",
                Math.Round(watch.Elapsed.TotalMilliseconds, 1));
        }
        var (allowed, detail) = request.Protocol switch
        {
            IpProtocol.Tcp => await Tcp(netns, target, request.Port, timeout).ConfigureAwait(false),
            IpProtocol.Udp => await Udp(netns, target, request.Port, timeout).ConfigureAwait(false),
            _ when request.IcmpType is 8 or 128 && request.IcmpCode is null or 0 => await Echo(netns, target, timeout)
                .ConfigureAwait(false),
            _ => await IcmpDelivery(netns, local!.Value.Record.Netns, target, request, timeout).ConfigureAwait(false),
        };
        return new ProbeResult(query.From, query.To, IpProtocol.Name(request.Protocol).ToLowerInvariant(), request.IsIcmp ? null
            : request.Port,
            request.IsIcmp ? request.IcmpType : null, request.Family == AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4",
            allowed ? "allowed" : "denied", detail, Math.Round(watch.Elapsed.TotalMilliseconds, 1));
    }

    private static Socket Open(string netns, AddressFamily family, SocketType type, ProtocolType protocol) =>
        NetworkNamespace.Run(netns, () => new Socket(family, type, protocol));

    /// <summary>A raw ICMP (or ICMPv6) socket inside <paramref name="netns"/> that receives every message of its family.</summary>
    private static Socket IcmpListener(string netns, bool v6)
    {
        var socket = Open(netns, v6 ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork, SocketType.Raw,
            v6 ? ProtocolType.IcmpV6 : ProtocolType.Icmp);
        socket.Bind(new IPEndPoint(v6 ? IPAddress.IPv6Any : IPAddress.Any, 0));
        return socket;
    }

    private static async Task<(bool, string)> Tcp(string netns, IPAddress target, int port, TimeSpan timeout)
    {
        using var socket = Open(netns, target.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
        using var cancel = new CancellationTokenSource(timeout);
        try
        {
            await socket.ConnectAsync(new IPEndPoint(target, port), cancel.Token).ConfigureAwait(false);
            return (true, "connected");
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            return (true, "connection refused (reached the pod; nothing listens on that port)");
        }
        catch (OperationCanceledException)
        {
            return (false, $"no answer within {timeout.TotalMilliseconds} ms");
        }
        catch (SocketException e)
        {
            return (false, e.SocketErrorCode.ToString());
        }
    }

    private static async Task<(bool, string)> Udp(string netns, IPAddress target, int port, TimeSpan timeout)
    {
        using var socket = Open(netns, target.AddressFamily, SocketType.Dgram, ProtocolType.Udp);
        using var cancel = new CancellationTokenSource(timeout);
        var payload = "membrane-probe"u8.ToArray();
        try
        {
            await socket.ConnectAsync(new IPEndPoint(target, port), cancel.Token).ConfigureAwait(false);
            await socket.SendAsync(payload, cancel.Token).ConfigureAwait(false);
            var buffer = new byte[256];
            var received = await socket.ReceiveAsync(buffer, cancel.Token).ConfigureAwait(false);
            return (true, $"echoed {received} bytes");
        }
        catch (SocketException e) when (e.SocketErrorCode == SocketError.ConnectionRefused)
        {
            return (true, "port unreachable (reached the pod; nothing listens on that port)");
        }
        catch (OperationCanceledException)
        {
            return (false, $"no answer within {timeout.TotalMilliseconds} ms");
        }
    }

    private static async Task<(bool, string)> Echo(string netns, IPAddress target, TimeSpan timeout)
    {
        var v6 = target.AddressFamily == AddressFamily.InterNetworkV6;
        using var socket = IcmpListener(netns, v6);
        var id = (ushort)Random.Shared.Next(1, 65535);
        await socket.SendToAsync(IcmpPacket(v6 ? (byte)128 : (byte)8, 0, id, v6), new IPEndPoint(target, 0)).ConfigureAwait(false);
        using var cancel = new CancellationTokenSource(timeout);
        var buffer = new byte[1500];
        try
        {
            while (true)
            {
                var r = await socket.ReceiveFromAsync(buffer, new IPEndPoint(v6 ? IPAddress.IPv6Any : IPAddress.Any, 0), cancel.Token)
                    .ConfigureAwait(false);
                var icmp = v6 ? buffer.AsSpan(0, r.ReceivedBytes) : buffer.AsSpan((buffer[0] & 0x0f) * 4,
                    r.ReceivedBytes - (buffer[0] & 0x0f) * 4);
                if (icmp.Length >= 8 && icmp[0] == (v6 ? 129 : 0) && BinaryPrimitives.ReadUInt16BigEndian(icmp[4..]) == id
                    && ((IPEndPoint)r.RemoteEndPoint).Address.Equals(target))
                {
                    return (true, "echo reply");
                }
            }
        }
        catch (OperationCanceledException)
        {
            return (false, $"no echo reply within {timeout.TotalMilliseconds} ms");
        }
    }

    /// <summary>Sends one ICMP message of any type and watches for it inside the destination's namespace.</summary>
    private static async Task<(bool, string)> IcmpDelivery(string sourceNetns, string destinationNetns, IPAddress target,
        TraceRequest request, TimeSpan timeout)
    {
        var v6 = target.AddressFamily == AddressFamily.InterNetworkV6;
        var protocol = v6 ? ProtocolType.IcmpV6 : ProtocolType.Icmp;
        using var listener = IcmpListener(destinationNetns, v6);
        using var sender = Open(sourceNetns, target.AddressFamily, SocketType.Raw, protocol);
        var id = (ushort)Random.Shared.Next(1, 65535);
        using var cancel = new CancellationTokenSource(timeout);
        var receive = Listen(listener, v6, request.IcmpType, id, cancel.Token);
        await sender.SendToAsync(IcmpPacket(request.IcmpType, request.IcmpCode ?? 0, id, v6), new IPEndPoint(target, 0))
            .ConfigureAwait(false);
        try
        {
            await receive.ConfigureAwait(false);
            return (true, $"type {request.IcmpType} delivered to the destination pod");
        }
        catch (OperationCanceledException)
        {
            return (false, $"type {request.IcmpType} not delivered within {timeout.TotalMilliseconds} ms");
        }
    }

    /// <summary>Completes when an ICMP message of <paramref name="type"/> with identifier <paramref name="id"/> arrives.</summary>
    private static async Task Listen(Socket listener, bool v6, int type, ushort id, CancellationToken cancel)
    {
        var buffer = new byte[1500];
        while (true)
        {
            var r = await listener.ReceiveFromAsync(buffer, new IPEndPoint(v6 ? IPAddress.IPv6Any : IPAddress.Any, 0), cancel)
                .ConfigureAwait(false);
            var header = v6 ? 0 : (buffer[0] & 0x0f) * 4;
            var icmp = buffer.AsSpan(header, Math.Max(0, r.ReceivedBytes - header));
            if (icmp.Length >= 8 && icmp[0] == type && BinaryPrimitives.ReadUInt16BigEndian(icmp[4..]) == id)
            {
                return;
            }
        }
    }

    /// <summary>
    /// The watching half of a probe whose source runs on another node: waits in this node's pod for the one-way ICMP
    /// message that node sends.
    /// </summary>
    public async Task<ProbeWatchResult> WatchAsync(ProbeWatchQuery query, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        if (query.MessageId is < 1 or > 65535 || query.IcmpType is < 0 or > 255)
        {
            throw new AgentInputException($"watch for ICMP type 0-255 with messageId 1-65535 (got type {query.IcmpType}, messageId " +
                $"{query.MessageId})");
        }
        var v6 = query.Family switch
        {
            "ipv4" => false,
            "ipv6" => true,
            _ => throw new AgentInputException($"family \"{query.Family}\" is not ipv4 or ipv6"),
        };
        var pod = await pods.FindPodAsync(query.Pod, cancel).ConfigureAwait(false);
        if (pod is null)
        {
            var elsewhere = await pods.FindPeerAsync(query.Pod, cancel).ConfigureAwait(false);
            throw new AgentInputException(elsewhere is not null ? $"{query.Pod} runs on node {elsewhere.Pod.NodeName}, not here"
                : $"no pod {query.Pod}")
            { Node = elsewhere?.Pod.NodeName };
        }
        var timeout = Timeout(query.TimeoutMs, DefaultTimeoutMs);
        using var listener = IcmpListener(pod.Value.Record.Netns, v6);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(timeout);
        try
        {
            await Listen(listener, v6, query.IcmpType, (ushort)query.MessageId, deadline.Token).ConfigureAwait(false);
            return new ProbeWatchResult(true, $"type {query.IcmpType} delivered to the destination pod");
        }
        catch (OperationCanceledException) when (!cancel.IsCancellationRequested)
        {
            return new ProbeWatchResult(false, $"type {query.IcmpType} not delivered within {timeout.TotalMilliseconds} ms");
        }
    }

    /// <summary>Sends a one-way ICMP message every 50 ms until the timeout (or the request ends); returns how many went.</summary>
    private static async Task<int> SendRepeatedly(string netns, IPAddress target, TraceRequest request, ushort id, TimeSpan timeout,
        CancellationToken cancel)
    {
        var v6 = target.AddressFamily == AddressFamily.InterNetworkV6;
        using var sender = Open(netns, target.AddressFamily, SocketType.Raw, v6 ? ProtocolType.IcmpV6 : ProtocolType.Icmp);
        var packet = IcmpPacket(request.IcmpType, request.IcmpCode ?? 0, id, v6);
        using var deadline = CancellationTokenSource.CreateLinkedTokenSource(cancel);
        deadline.CancelAfter(timeout);
        var sent = 0;
        try
        {
            while (true)
            {
                await sender.SendToAsync(packet, new IPEndPoint(target, 0), deadline.Token).ConfigureAwait(false);
                sent++;
                await Task.Delay(50, deadline.Token).ConfigureAwait(false);
            }
        }
        catch (OperationCanceledException)
        {
            return sent;
        }
    }

    /// <summary>An ICMP(v6) message with a small body; IPv4 carries its checksum, the kernel fills IPv6's.</summary>
    internal static byte[] IcmpPacket(byte type, byte code, ushort id, bool v6)
    {
        var packet = new byte[8 + 16];
        packet[0] = type;
        packet[1] = code;
        BinaryPrimitives.WriteUInt16BigEndian(packet.AsSpan(4), id);
        BinaryPrimitives.WriteUInt16BigEndian(packet.AsSpan(6), 1);
        "membrane-probe.."u8.CopyTo(packet.AsSpan(8));
        if (!v6)
        {
            uint sum = 0;
            for (var i = 0; i < packet.Length; i += 2)
            {
                sum += (uint)(packet[i] << 8 | packet[i + 1]);
            }
            while (sum >> 16 != 0)
            {
                sum = (sum & 0xffff) + (sum >> 16);
            }
            BinaryPrimitives.WriteUInt16BigEndian(packet.AsSpan(2), (ushort)~sum);
        }
        return packet;
    }

    /// <summary>Probes every ordered pair of pods, in parallel, for one or several probe kinds.</summary>
    public async Task<MatrixResponse> MatrixAsync(MatrixQuery query, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(query);
        var watch = Stopwatch.StartNew();
        Timeout(query.TimeoutMs, 800);
        // Sources are this node's pods; destinations every pod it knows (other nodes' too, in cluster mode).
        var sources = (await pods.PodKeysAsync(cancel).ConfigureAwait(false)).ToHashSet(StringComparer.Ordinal);
        var keys = await pods.PeerKeysAsync(cancel).ConfigureAwait(false);
        if (query.Namespaces is { Count: > 0 } namespaces)
        {
            keys = keys.Where(p => namespaces.Contains(p.Split('/')[0])).ToList();
        }
        var kinds = query.Protocol switch
        {
            null => new List<(string Protocol, int? Port, string? Type, string? Family)>
            {
                ("icmp", null, "8", "ipv4"), ("icmpv6", null, "128", "ipv6"), ("tcp", query.Port ?? 80, null, query.Family), ("udp",
                    query.Port ?? 53, null, query.Family),
            },
            "icmp" or "icmpv6" => [(query.Protocol, null, query.Protocol == "icmpv6" || query.Family == "ipv6" ? "128" : "8",
                query.Family)],
            "tcp" => [("tcp", query.Port ?? 80, null, query.Family)],
            "udp" => [("udp", query.Port ?? 53, null, query.Family)],
            _ => [(query.Protocol, query.Port, null, query.Family)],
        };
        var probes = (from kind in kinds
                      from a in keys
                      from b in keys
                      where a != b && sources.Contains(a)
                      select new ProbeQuery(a, b, kind.Protocol, kind.Port, kind.Type, null, kind.Family, query.TimeoutMs ?? 800)).ToList();
        using var limit = new SemaphoreSlim(24);
        var results = await Task.WhenAll(probes.Select(async p =>
        {
            await limit.WaitAsync(cancel).ConfigureAwait(false);
            try
            {
                return await ProbeAsync(p, cancel).ConfigureAwait(false);
            }
            finally
            {
                limit.Release();
            }
        })).ConfigureAwait(false);
        return new MatrixResponse(keys, results, Math.Round(watch.Elapsed.TotalMilliseconds, 1));
    }
}
