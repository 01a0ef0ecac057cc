using Microsoft.Extensions.Logging;

namespace Membrane.Agent;

/// <summary>The agent's log messages (source-generated: no formatting cost when the level is off).</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 10, Level = LogLevel.Error,
        Message = "undoing a failed change was incomplete; a restart restores from the state file")]
    public static partial void RollbackIncomplete(ILogger logger, Exception exception);

    [LoggerMessage(EventId = 53, Level = LogLevel.Warning, Message = "datapath upgrade: {Change}")]
    public static partial void PinChanged(ILogger logger, string change);

    [LoggerMessage(EventId = 41, Level = LogLevel.Warning,
        Message = "could not tell the cluster store this node stopped using identity {Id}: {Reason}")]
    public static partial void ClusterReleaseFailed(ILogger logger, uint id, string reason);

    [LoggerMessage(EventId = 42, Level = LogLevel.Error,
        Message = "identity {Labels} is {Local} here but {Cluster} in the cluster store; restart with a clean state to take the store's")]
    public static partial void ClusterNumberDiffers(ILogger logger, string labels, uint local, uint cluster);

    [LoggerMessage(EventId = 20, Level = LogLevel.Information,
        Message = "container {ContainerId} ({Pod}) went while the agent was away: its attachment is removed")]
    public static partial void ContainerVanished(ILogger logger, string containerId, string pod);

    [LoggerMessage(EventId = 21, Level = LogLevel.Information, Message = "applied a DEL queued while the agent was away: {File}")]
    public static partial void QueuedDeleteApplied(ILogger logger, string file);

    [LoggerMessage(EventId = 22, Level = LogLevel.Warning, Message = "cannot apply the queued DEL {File}: {Reason}; it stays queued")]
    public static partial void QueuedDeleteFailed(ILogger logger, string file, string reason);

    [LoggerMessage(EventId = 23, Level = LogLevel.Information, Message = "endpoint {Pod}: policy audit mode {Mode}")]
    public static partial void EndpointAuditMode(ILogger logger, string pod, string mode);

    [LoggerMessage(EventId = 11, Level = LogLevel.Information,
        Message = "change from {Source} at revision {Revision}: {Objects}; endpoints: {Endpoints}")]
    public static partial void Changed(ILogger logger, string source, long revision, string objects, string endpoints);

    [LoggerMessage(EventId = 12, Level = LogLevel.Warning,
        Message = "change from {Source} refused, state kept at revision {Revision}: {Reason}")]
    public static partial void ChangeRefused(ILogger logger, string source, long revision, string reason);
}
