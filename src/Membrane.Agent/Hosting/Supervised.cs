using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Hosting;

/// <summary>
/// Runs a background loop of the agent so that no failure in it ends the process: an unexpected exception is logged
/// with its stack, handed to <c>report</c> (status says what is behind and why), and the loop starts again after a
/// backoff of 1 s doubling to 30 s. The loop ends only when the agent stops.
/// </summary>
public static partial class Supervised
{
    public static readonly TimeSpan FirstDelay = TimeSpan.FromSeconds(1);

    public static readonly TimeSpan LongestDelay = TimeSpan.FromSeconds(30);

    public static async Task RunAsync(string part, Func<CancellationToken, Task> loop, ILogger log, CancellationToken stop,
        Action<string, string>? report = null)
    {
        ArgumentNullException.ThrowIfNull(loop);
        var delay = FirstDelay;
        while (!stop.IsCancellationRequested)
        {
            try
            {
                await loop(stop).ConfigureAwait(false);
                return;
            }
#pragma warning disable CA1031 // the agent stops: whatever the loop ended with (cancelled calls end in many ways) is the stop
            catch (Exception) when (stop.IsCancellationRequested)
#pragma warning restore CA1031
            {
                return;
            }
#pragma warning disable CA1031 // the point: a fault in one loop never ends the agent, and it is reported and retried
            catch (Exception e)
#pragma warning restore CA1031
            {
                Restarting(log, part, delay.TotalSeconds, e);
                report?.Invoke(part, $"{part} failed ({e.GetType().Name}: {e.Message}); restarting it");
                Monitoring.AgentMetrics.LoopRestarts.WithLabels(part).Inc();
            }
            try
            {
                await Task.Delay(delay, stop).ConfigureAwait(false);
            }
            catch (OperationCanceledException)
            {
                return;
            }
            delay = Next(delay);
        }
    }

    /// <summary>The next backoff: double, at most <see cref="LongestDelay"/>.</summary>
    public static TimeSpan Next(TimeSpan delay) => TimeSpan.FromTicks(Math.Min(delay.Ticks * 2, LongestDelay.Ticks));

    [LoggerMessage(EventId = 48, Level = LogLevel.Error, Message = "{Part} failed; it restarts in {Seconds} s")]
    private static partial void Restarting(ILogger logger, string part, double seconds, Exception exception);
}
