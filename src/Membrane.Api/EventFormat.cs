namespace Membrane.Api;

/// <summary>How <c>membrane monitor</c> shows a datapath event: one line each.</summary>
public static class EventFormat
{
    public static string Line(MonitorEvent e)
    {
        ArgumentNullException.ThrowIfNull(e);
        var what = e.IcmpType is { } t
            ? $"{e.Protocol} type {t}{(e.IcmpName is { } n ? $" ({n})" : "")} code {e.IcmpCode}"
            : $"{e.Protocol} {Endpoint(e.Source, e.SourcePort)} -> {Endpoint(e.Destination, e.DestinationPort)}";
        var addresses = e.IcmpType is null ? "" : $" {e.Source} -> {e.Destination}";
        return $"{e.Time:HH:mm:ss.fff} {e.Verdict,-8} {e.Endpoint} {e.Direction} peer {e.PeerIdentity} ({e.Peer}) {what}{addresses}: " +
            $"{e.Reason}"
            + (e.Rule is { Length: > 0 } r ? $" [{e.MatchKind}: {r}]" : "");
    }

    private static string Endpoint(string address, int? port) =>
        address.Contains(':', StringComparison.Ordinal) ? $"[{address}]:{port}" : $"{address}:{port}";
}
