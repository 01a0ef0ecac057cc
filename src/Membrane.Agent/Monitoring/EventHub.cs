using System.Threading.Channels;
using Membrane.Api;
using Membrane.Datapath;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Policy.Rules;

namespace Membrane.Agent.Monitoring;

/// <summary>
/// Reads the datapath's event ring buffer and fans the events out to monitors; with a flow ring, every drop and new
/// allowed connection is also kept there, always (the kernel emits them from the start). Without one, emission is on
/// only while a monitor listens, so an idle node pays nothing for it.
/// </summary>
public sealed class EventHub(PolicyDatapath datapath, Func<uint, uint, (string Endpoint, string Peer)> describe, FlowRing? flows = null,
    bool everyPacket = false)
    : IDisposable
{
    private readonly Lock _gate = new();
    private readonly List<(Channel<MonitorEvent> Channel, bool Verdicts)> _subscribers = [];
    private Thread? _reader;
    private volatile bool _stopping;

    public FlowRing? Flows => flows;

    /// <summary>With a flow ring: events on and the reader running from the start.</summary>
    public void Start()
    {
        if (flows is null)
        {
            return;
        }
        lock (_gate)
        {
            UpdateFlags();
            StartReader();
        }
    }

    private void StartReader()
    {
        if (_reader is null)
        {
            _stopping = false;
            _reader = new Thread(ReadLoop) { IsBackground = true, Name = "event reader" };
            _reader.Start();
        }
    }

    public ChannelReader<MonitorEvent> Subscribe(bool verdicts, CancellationToken cancel)
    {
        var channel = Channel.CreateBounded<MonitorEvent>(new BoundedChannelOptions(4096) { FullMode = BoundedChannelFullMode.DropOldest });
        lock (_gate)
        {
            _subscribers.Add((channel, verdicts));
            UpdateFlags();
            StartReader();
        }
        cancel.Register(() =>
        {
            lock (_gate)
            {
                _subscribers.RemoveAll(s => s.Channel == channel);
                channel.Writer.TryComplete();
                UpdateFlags();
            }
        });
        return channel.Reader;
    }

    private void UpdateFlags()
    {
        var verdicts = flows is not null || _subscribers.Any(s => s.Verdicts);
        datapath.SetEvents(drops: flows is not null || _subscribers.Count > 0, verdicts, traces: everyPacket && verdicts);
    }

    private void ReadLoop()
    {
        using var ring = new RingBufferReader(datapath.Events, Deliver);
        while (!_stopping)
        {
            ring.Poll(200);
        }
    }

    private void Deliver(ReadOnlySpan<byte> record)
    {
        var e = DatapathEvent.Read(record);
        flows?.Add(DateTimeOffset.UtcNow, e);
        lock (_gate)
        {
            if (_subscribers.Count == 0)
            {
                return;
            }
        }
        var message = Format(e);
        lock (_gate)
        {
            foreach (var (channel, verdicts) in _subscribers)
            {
                if (e.Type != (byte)EventType.Verdict || verdicts)
                {
                    channel.Writer.TryWrite(message);
                }
            }
        }
    }

    private MonitorEvent Format(DatapathEvent e)
    {
        var (endpoint, peer) = describe(e.IfIndex, e.PeerIdentity);
        var icmp = IpProtocol.IsIcmp(e.Protocol);
        var family = e.Family == 4 ? IcmpFamily.IPv4 : IcmpFamily.IPv6;
        var (type, verdict) = (EventType)e.Type switch
        {
            EventType.Drop => ("drop", "DROPPED"),
            EventType.Audit => ("audit", "AUDIT"), // policy would have dropped it; audit mode let it through
            EventType.Trace => ("trace", "FORWARDED"), // conntrack let it through: no policy decision
            _ => ("verdict", "ALLOWED"),
        };
        return new MonitorEvent(
            DateTimeOffset.UtcNow, type, endpoint, WireNames.Of((WireDirection)e.Direction), e.PeerIdentity, peer,
            IpProtocol.Name(e.Protocol), e.SourceAddress.ToString(), e.DestinationAddress.ToString(),
            icmp ? null : e.SourcePort, icmp ? null : e.DestinationPort, icmp ? e.IcmpType : null, icmp ? e.IcmpCode : null,
            icmp ? IcmpTypes.NameOf(family, e.IcmpType) : null, verdict, type == "trace" ? FlowNames.Trace((TraceReason)e.Reason)
                : DropReasons.Describe((DropReason)e.Reason) + (verdict == "AUDIT" ? "; let through by audit mode" : ""),
            WireNames.Of((WireMatchKind)e.MatchKind), e.RuleId == 0 ? null : datapath.Rules.Describe(e.RuleId));
    }

    public void Dispose()
    {
        _stopping = true;
        _reader?.Join(1000);
    }
}
