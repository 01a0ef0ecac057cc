using Microsoft.Extensions.Logging;

namespace Membrane.Agent;

/// <summary>The agent's log messages (source-generated: no formatting cost when the level is off).</summary>
internal static partial class Log
{
    [LoggerMessage(EventId = 10, Level = LogLevel.Error,
        Message = "undoing a failed change was incomplete; a restart restores from the state file")]
    public static partial void RollbackIncomplete(ILogger logger, Exception exception);
}
