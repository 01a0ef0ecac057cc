using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.Extensions.Logging.Console;

namespace Membrane.Agent.Hosting;

/// <summary>
/// The agent's log lines as an operator reads them on stderr: the message alone, prefixed by the level when it is a
/// warning or worse (<c>error: …</c>), and the exception after it. Timestamps are the supervisor's business.
/// </summary>
internal sealed class PlainConsoleFormatter() : ConsoleFormatter(Name)
{
    public new const string Name = "membrane";

    public override void Write<TState>(in LogEntry<TState> logEntry, IExternalScopeProvider? scopeProvider, TextWriter textWriter)
    {
        var message = logEntry.Formatter(logEntry.State, logEntry.Exception);
        var level = logEntry.LogLevel switch
        {
            LogLevel.Warning => "warning: ",
            LogLevel.Error => "error: ",
            LogLevel.Critical => "critical: ",
            _ => "",
        };
        textWriter.WriteLine($"{level}{message}{(logEntry.Exception is { } e ? $": {e}" : "")}");
    }
}
