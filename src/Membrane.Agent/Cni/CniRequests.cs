using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;
using Membrane.Agent.Changes;
using Membrane.Agent.Endpoints;
using Membrane.Agent.State;
using Membrane.Api;
using Membrane.Policy.Api;
using Membrane.Policy.Workloads;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Cni;

/// <summary>
/// Container runtimes' requests (through the CNI plugin): ADD, DEL, CHECK, GC. A pod's endpoint is its attachment;
/// its labels come from the Pod object of the same namespace/name when the agent holds one, else from the runtime,
/// else it has the reserved init identity until they arrive. Every change runs through the one commit path.
/// </summary>
/// <remarks>
/// The kernel is reached through <paramref name="runtime"/> (interfaces) and <paramref name="programsAttached"/> (is the
/// policy attached to an interface index) only for CHECK and ADD's result; every change goes through the coordinator.
/// </remarks>
public sealed class CniRequests(ChangeCoordinator coordinator, AttachedPods pods, AgentOptions options, IEndpointRuntime runtime,
    Func<int, bool> programsAttached, ILogger log)
{
    private CniAttachments Attachments => pods.Attachments;

    private DesiredState State => coordinator.State;

    private IReadOnlyDictionary<string, EndpointRecord> Records => coordinator.Enforcer.Records;

    /// <summary>ADD: the endpoint exists and is enforced before this returns; the result is the CNI result (interface mode).</summary>
    public async Task<CniAddResponse> AddAsync(CniAttachmentRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var attachments = Attachments;
        CniRequestCheck.Check(request, adding: true);
        var chained = request.PrevResult is not null;
        var previous = chained ? CniRequestCheck.PreviousAddresses(request.PrevResult!, request.InterfaceName) : null;
        await coordinator.ChangeAsync(ChangeSource.Cni, () =>
        {
            var key = $"{request.PodNamespace}/{request.PodName}";
            if (attachments.Find(request.ContainerId, request.InterfaceName) is { } existing)
            {
                if (existing.Netns != request.Netns || existing.PodKey != key || existing.Chained != chained
                    || existing.Network != request.Network)
                {
                    throw new AgentInputException($"container {request.ContainerId} already has {request.InterfaceName} in " +
                        $"{existing.Netns} for pod {existing.PodKey} (network {existing.Network ?? "unnamed"}); an ADD with another " +
                        "namespace, pod or network is refused (DEL it first)");
                }
                return []; // a repeated ADD: the attachment is there already
            }
            if (attachments.ForPod(key) is { } other)
            {
                throw new AgentInputException($"pod {key} already has an interface ({other.InterfaceName} of container " +
                    $"{other.ContainerId}); the runtime must DEL it before adding another");
            }
            if (previous?.FirstOrDefault(a => options.PodIPv4Range.Contains(a) || options.PodIPv6Range.Contains(a)) is { } ours)
            {
                throw new AgentInputException($"prevResult gives {request.InterfaceName} {ours}, inside the agent's own pod ranges " +
                    $"({options.PodIPv4Range}, {options.PodIPv6Range}) that it allocates itself: give the plugin before membrane-cni " +
                    "another range");
            }
            var addresses = previous ?? State.Ipam.Allocate();
            var owners = State.Engine.Endpoints.SelectMany(e => e.Addresses.Select(a => (a, e.Key))).ToDictionary(x => x.a, x => x.Key);
            if (addresses.FirstOrDefault(owners.ContainsKey) is { } taken)
            {
                throw new AgentInputException($"{taken} is already the address of pod {owners[taken]}: two endpoints cannot share an " +
                    "address (check the IPAM of the plugin before membrane-cni)");
            }
            attachments.Put(new CniAttachment(request.ContainerId, request.InterfaceName, request.Netns!, request.PodNamespace,
                request.PodName!, chained, [.. addresses.Select(a => a.ToString())])
            { Network = request.Network });
            pods.Sync(State);
            return [new ObjectChange($"Attachment/{request.ContainerId}/{request.InterfaceName}", "created")];
        }, cancel).ConfigureAwait(false);
        if (chained)
        {
            return new CniAddResponse("");
        }
        return await coordinator.ExclusiveAsync(() => new CniAddResponse(Result(request)), cancel).ConfigureAwait(false);
    }

    /// <summary>DEL: idempotent; an unknown attachment (deleted already, or never added) is not an error.</summary>
    public Task<ApplyResponse> DelAsync(CniAttachmentRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var attachments = Attachments;
        CniRequestCheck.Check(request, adding: false);
        return coordinator.ChangeAsync(ChangeSource.Cni, () =>
        {
            if (attachments.Find(request.ContainerId, request.InterfaceName) is not { } attachment)
            {
                return [];
            }
            pods.Forget(State, attachment);
            pods.Sync(State);
            return [new ObjectChange($"Attachment/{request.ContainerId}/{request.InterfaceName}", "deleted")];
        }, cancel);
    }

    /// <summary>GC: every attachment of the request's network that the runtime no longer lists goes.</summary>
    public Task<ApplyResponse> GcAsync(CniGcRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var attachments = Attachments;
        var valid = (request.ValidAttachments ?? throw new AgentInputException("GC needs the attachments the runtime still has " +
            "(validAttachments); without them nothing is removed")).Select(v => (v.ContainerId, v.InterfaceName)).ToHashSet();
        return coordinator.ChangeAsync(ChangeSource.Cni, () =>
        {
            // Only this network's: another network's attachments are its runtime's business, listed in its own GC.
            var stale = attachments.All.Where(a => a.Network == request.Network && !valid.Contains((a.ContainerId, a.InterfaceName)))
                .ToList();
            foreach (var attachment in stale)
            {
                pods.Forget(State, attachment);
            }
            pods.Sync(State);
            return stale.Select(a => new ObjectChange($"Attachment/{a.ContainerId}/{a.InterfaceName}", "deleted")).ToList();
        }, cancel);
    }

    /// <summary>CHECK: the attachment exists, its interface is intact with its addresses, and the programs are attached.</summary>
    public Task<ApplyResponse> CheckAsync(CniAttachmentRequest request, CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(request);
        var attachments = Attachments;
        CniRequestCheck.Check(request, adding: true);
        return coordinator.ExclusiveAsync(() =>
        {
            var attachment = attachments.Find(request.ContainerId, request.InterfaceName)
                ?? throw new AgentInputException($"the agent has no attachment for container {request.ContainerId} interface " +
                    $"{request.InterfaceName}: ADD it first");
            var record = Records.GetValueOrDefault(attachment.PodKey);
            if (record is null || !runtime.IsIntact(record))
            {
                throw new AgentInputException($"the host end of {attachment.PodKey}'s interface is gone; delete and re-create the " +
                    "container");
            }
            var (_, actual) = CniRuntime.Inspect(attachment.Netns, attachment.InterfaceName);
            var missing = attachment.Addresses.Select(IPAddress.Parse).Where(a => !actual.Contains(a)).ToList();
            if (missing.Count > 0)
            {
                throw new AgentInputException($"{attachment.InterfaceName} in {attachment.Netns} lacks {string.Join(", ", missing)}");
            }
            if (!programsAttached(record.IfIndex))
            {
                throw new AgentInputException($"the policy programs are not attached to {record.HostInterface}; restart the agent");
            }
            return new ApplyResponse(State.Store.Revision, []);
        }, cancel);
    }

    /// <summary>The CNI result of an interface-mode ADD: both ends, the addresses and the default routes.</summary>
    private string Result(CniAttachmentRequest request)
    {
        var attachment = Attachments.Find(request.ContainerId, request.InterfaceName)
            ?? throw new InvalidOperationException("the attachment vanished");
        var record = Records.GetValueOrDefault(attachment.PodKey) ?? throw new InvalidOperationException("the endpoint vanished");
        var (mac, _) = CniRuntime.Inspect(attachment.Netns, attachment.InterfaceName);
        using var buffer = new MemoryStream();
        using (var json = new Utf8JsonWriter(buffer, new JsonWriterOptions { Indented = true }))
        {
            json.WriteStartObject();
            json.WriteString("cniVersion", request.CniVersion);
            json.WriteStartArray("interfaces");
            json.WriteStartObject();
            json.WriteString("name", record.HostInterface);
            json.WriteString("mac", CniRuntime.MacOf(record.HostInterface) ?? "");
            json.WriteEndObject();
            json.WriteStartObject();
            json.WriteString("name", attachment.InterfaceName);
            json.WriteString("mac", mac);
            json.WriteString("sandbox", attachment.Netns);
            json.WriteEndObject();
            json.WriteEndArray();
            json.WriteStartArray("ips");
            foreach (var address in attachment.Addresses.Select(IPAddress.Parse))
            {
                var v4 = address.AddressFamily == AddressFamily.InterNetwork;
                json.WriteStartObject();
                json.WriteString("address", CniRuntime.Prefix(address));
                json.WriteString("gateway", (v4 ? AgentOptions.GatewayIPv4 : AgentOptions.GatewayIPv6).ToString());
                json.WriteNumber("interface", 1);
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartArray("routes");
            foreach (var (dst, gw) in new[] { ("0.0.0.0/0", AgentOptions.GatewayIPv4), ("::/0", AgentOptions.GatewayIPv6) })
            {
                json.WriteStartObject();
                json.WriteString("dst", dst);
                json.WriteString("gw", gw.ToString());
                json.WriteEndObject();
            }
            json.WriteEndArray();
            json.WriteStartObject("dns");
            json.WriteEndObject();
            json.WriteEndObject();
        }
        return Encoding.UTF8.GetString(buffer.ToArray());
    }

    private const long MaxQueuedDeleteBytes = 64 * 1024;

    /// <summary>The directory where the plugin queues DELs while the agent is away (its default beside the socket).</summary>
    public string DeleteQueue => Path.Combine(options.StateDirectory, "cni-delete-queue");

    /// <summary>
    /// At start: attachments whose container went while the agent was away (no interface, no namespace) are removed;
    /// one whose namespace still exists gets its interface again.
    /// </summary>
    public void ForgetVanishedContainers()
    {
        foreach (var attachment in Attachments.Snapshot() ?? [])
        {
            if (Records.GetValueOrDefault(attachment.PodKey) is null && !File.Exists(attachment.Netns))
            {
                Log.ContainerVanished(log, attachment.ContainerId, attachment.PodKey);
                pods.Forget(State, attachment);
            }
        }
    }

    /// <summary>Applies the DELs the plugin queued while the agent was away, oldest first; each file goes once applied.</summary>
    public void ApplyQueuedDeletes()
    {
        if (SafeFiles.Inspect(DeleteQueue).Kind == PathKind.Missing)
        {
            return;
        }
        try
        {
            // A queue another user could write would let them delete attachments (and their policy): not read.
            SafeFiles.EnsurePrivateDirectory(DeleteQueue);
        }
        catch (Exception e) when (e is InvalidOperationException or IOException)
        {
            Log.QueuedDeleteFailed(log, DeleteQueue, e.Message);
            return;
        }
        foreach (var file in new DirectoryInfo(DeleteQueue).GetFiles("*.json").OrderBy(f => f.LastWriteTimeUtc))
        {
            try
            {
                // Only a regular file of a few KiB: a FIFO would block the start, a link to /dev/zero never end.
                using var document = JsonDocument.Parse(SafeFiles.ReadRegular(file.FullName, MaxQueuedDeleteBytes));
                var root = document.RootElement;
                var request = new CniAttachmentRequest(root.GetProperty("containerId").GetString() ?? "",
                    root.GetProperty("ifName").GetString() ?? "", null, "default", null, null);
                DelAsync(request).GetAwaiter().GetResult();
                file.Delete();
                Log.QueuedDeleteApplied(log, file.Name);
            }
            catch (InvalidDataException e)
            {
                Log.QueuedDeleteFailed(log, file.Name, $"{e.Message}; removed, it is no queued DEL");
                File.Delete(file.FullName);
            }
            catch (Exception e) when (e is JsonException or KeyNotFoundException or InvalidOperationException or IOException
                                       or AgentInputException)
            {
                Log.QueuedDeleteFailed(log, file.Name, e.Message);
            }
        }
    }

    /// <summary>Attachments that have neither a Pod object nor labels from their runtime: they wait in the init identity.</summary>
    public Task<IReadOnlyList<CniAttachment>> AwaitingLabelsAsync(CancellationToken cancel) => coordinator.ExclusiveAsync(() =>
    {
        var objects = State.Store.Objects;
        return (IReadOnlyList<CniAttachment>)Attachments.All.Where(a => a.RuntimeLabels is null
            && !objects.ContainsKey($"Pod/{a.PodKey}")).ToList();
    }, cancel);

    /// <summary>
    /// The runtime reported the pod's labels (the CRI's pod sandbox): the endpoint leaves init and is re-identified
    /// live. Labels the runtime adds for its own bookkeeping (<c>io.kubernetes.*</c>) are not the pod's.
    /// </summary>
    public Task<ApplyResponse> SetRuntimeLabelsAsync(string containerId, string interfaceName, IReadOnlyDictionary<string, string> labels,
        CancellationToken cancel = default)
    {
        ArgumentNullException.ThrowIfNull(labels);
        var attachments = Attachments;
        var own = labels.Where(l => !l.Key.StartsWith("io.kubernetes.", StringComparison.Ordinal)
            && !l.Key.StartsWith("io.cri-containerd.", StringComparison.Ordinal))
            .ToDictionary(l => l.Key, l => l.Value, StringComparer.Ordinal);
        if (PodLabels.Check(own) is { } problem)
        {
            // Not Kubernetes labels: they could spell another label set. The endpoint stays in init.
            throw new AgentInputException($"the runtime's labels for container {containerId} are refused: {problem}");
        }
        return coordinator.ChangeAsync(ChangeSource.Cni, () =>
        {
            if (attachments.Find(containerId, interfaceName) is not { } attachment)
            {
                return []; // deleted meanwhile
            }
            attachments.Put(attachment with { RuntimeLabels = own });
            pods.Sync(State);
            return [new ObjectChange($"Attachment/{containerId}/{interfaceName}", "labelled")];
        }, cancel);
    }
}
