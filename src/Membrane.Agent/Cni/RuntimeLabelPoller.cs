using Grpc.Core;
using Membrane.Cri;
using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Cni;

/// <summary>
/// Reads the labels of containers that have no Pod object from their runtime's CRI: containerd lists a pod sandbox
/// only after the CNI ADD of its network has returned, so the endpoint starts in the init identity and this poller
/// re-identifies it as soon as the sandbox is listed.
/// </summary>
public sealed partial class RuntimeLabelPoller(AgentService agent, CriClient cri, ILogger<RuntimeLabelPoller> log) : BackgroundService
{
    private CniRequests Cni => agent.Cni ?? throw new InvalidOperationException("the agent does not serve container runtimes");

    private static readonly TimeSpan Interval = TimeSpan.FromMilliseconds(200);
    private readonly HashSet<string> _refused = new(StringComparer.Ordinal);

    protected override Task ExecuteAsync(CancellationToken stoppingToken) =>
        Hosting.Supervised.RunAsync("the CRI label poller", PollAsync, log, stoppingToken);

    private async Task PollAsync(CancellationToken stoppingToken)
    {
        using var timer = new PeriodicTimer(Interval);
        var unreachable = false;
        while (await timer.WaitForNextTickAsync(stoppingToken).ConfigureAwait(false))
        {
            foreach (var attachment in await Cni.AwaitingLabelsAsync(stoppingToken).ConfigureAwait(false))
            {
                try
                {
                    if (await cri.SandboxAsync(attachment.ContainerId, stoppingToken).ConfigureAwait(false) is { } sandbox)
                    {
                        await Cni.SetRuntimeLabelsAsync(attachment.ContainerId, attachment.InterfaceName, sandbox.Labels, stoppingToken)
                            .ConfigureAwait(false);
                        Labelled(log, attachment.PodKey, sandbox.Labels.Count);
                    }
                    unreachable = false;
                }
                catch (AgentInputException e)
                {
                    if (_refused.Add(attachment.ContainerId))
                    {
                        Refused(log, attachment.PodKey, e.Message); // stays in init; asked again (said once)
                    }
                }
                catch (RpcException e) when (e.StatusCode == StatusCode.Cancelled && stoppingToken.IsCancellationRequested)
                {
                    return; // the agent stops: gRPC ends a cancelled call with this status, not an OperationCanceledException
                }
                catch (RpcException e) when (e.StatusCode is StatusCode.Unavailable or StatusCode.DeadlineExceeded)
                {
                    if (!unreachable)
                    {
                        Unreachable(log, cri.SocketPath, e.Status.Detail);
                    }
                    unreachable = true;
                }
            }
        }
    }

    [LoggerMessage(EventId = 30, Level = LogLevel.Information, Message = "{Pod}: {Count} label(s) from the CRI; re-identified")]
    private static partial void Labelled(ILogger logger, string pod, int count);

    [LoggerMessage(EventId = 32, Level = LogLevel.Warning, Message = "{Pod}: {Reason}; it keeps the init identity")]
    private static partial void Refused(ILogger logger, string pod, string reason);

    [LoggerMessage(EventId = 31, Level = LogLevel.Warning,
        Message = "the CRI at {Socket} does not answer ({Detail}); containers without a Pod object keep the init identity")]
    private static partial void Unreachable(ILogger logger, string socket, string detail);
}
