using System.Text.Json.Serialization;

namespace Membrane.Api;

// The agent's API, used by the CLI over the Unix socket. Property names are the CLI's `-o json` contract too.

public sealed record ErrorDetail(string File, [property: JsonPropertyName("object")] string ObjectName, string Path, string Message,
    int Line, int Column);

/// <summary>An error; <see cref="Node"/> names the node that can answer instead (a pod of another node, cluster mode).</summary>
/// <summary>
/// An error. <see cref="Node"/>: the node whose agent can answer the request instead; <see cref="WatchOn"/>: a probe
/// whose message is looked for in the destination pod, which runs on that node (the CLI has it watched there).
/// </summary>
public sealed record ErrorResponse(string Error, IReadOnlyList<ErrorDetail> Errors, string? Node = null, string? WatchOn = null);

public sealed record StatusResponse(
    string Version, long Revision, string Kernel, int Endpoints, int Identities, int Policies, int Namespaces,
    string StateDirectory, string PinDirectory, string NodeNamespace, IReadOnlyDictionary<string, ulong> Drops,
    double LastRegenerationMilliseconds, IReadOnlyList<MapFillOutput>? Maps = null, ClusterStatusOutput? Cluster = null,
    bool PolicyAuditMode = false, string? Attachment = null, string? Metrics = null, bool MetricsExposed = false,
    string? HostRouting = null);

/// <summary>
/// Cluster mode: this node, the store's health (<c>degraded</c> with every reason), the store revision it has fully
/// enforced (its endpoints, its maps and the addresses of every pod on a node that is up), the latest it has seen and
/// what it lacks for that one, the nodes it knows and how many of other nodes' pod addresses it holds.
/// </summary>
public sealed record ClusterStatusOutput(
    string Node, string RoutingMode, string Health, IReadOnlyList<string> Reasons, long EnforcedRevision, string? UnderlayAddress,
    IReadOnlyList<NodeOutput> Nodes, int RemoteEndpoints, long SeenRevision = 0, IReadOnlyList<string>? Lacks = null);

/// <summary>
/// Whether every node that is up has enforced <see cref="Revision"/> (<c>apply</c> in cluster mode waits on it), and
/// each node's report.
/// </summary>
public sealed record ClusterEnforcementOutput(long Revision, bool Enforced, IReadOnlyList<NodeEnforcementOutput> Nodes);

public sealed record NodeEnforcementOutput(string Node, long EnforcedRevision, long SeenRevision, IReadOnlyList<string> Lacks);

/// <summary>
/// <c>policy import --dry-run</c> (Yaml) or <c>policy delete --dry-run</c> (Delete names a policy, or All): what the
/// change would do, computed without installing it.
/// </summary>
public sealed record DryRunRequest(string? Yaml = null, string? File = null, string? Delete = null, bool All = false);

/// <summary>
/// A live connection (in conntrack), or flows of the flow ring alike in pod, direction, addresses and port (<c>Seen</c>
/// of them, the last at <c>LastSeen</c>), whose verdict the change would flip, with the rule that causes it.
/// </summary>
public sealed record DryRunConnection(string Pod, string Direction, string Protocol, string Source, string Destination,
    int? Port, int? IcmpType, string Before, string After, string Cause, int? IcmpCode = null, int Seen = 1,
    DateTimeOffset? LastSeen = null);

/// <summary>An endpoint whose policy the change would alter: its map entries before and after.</summary>
public sealed record DryRunEndpoint(string Pod, int EntriesBefore, int EntriesAfter);

/// <summary>
/// What a change would do: live connections cut or admitted, and the same for the recent flows of the flow ring (drops,
/// audits, new connections), judged by the policy in force and the changed one.
/// </summary>
public sealed record DryRunResponse(IReadOnlyList<DryRunConnection> WouldBeCut, IReadOnlyList<DryRunConnection> WouldBeAllowed,
    IReadOnlyList<DryRunEndpoint> Endpoints, int ConnectionsChecked, IReadOnlyList<DryRunConnection>? FlowsWouldBeCut = null,
    IReadOnlyList<DryRunConnection>? FlowsWouldBeAllowed = null, int FlowsChecked = 0);

/// <summary>
/// A flow as the reference system's flow tool prints it (its JSON field names): a drop, an audit or a new allowed
/// connection (trace reason NEW) kept in the agent's flow ring; with <c>--monitor-aggregation none</c> also every other
/// packet let through (ESTABLISHED, REPLY, RELATED).
/// </summary>
public sealed record Flow(
    [property: JsonPropertyName("time")] DateTimeOffset Time,
    [property: JsonPropertyName("verdict")] string Verdict,
    [property: JsonPropertyName("drop_reason_desc")] string? DropReasonDesc,
    [property: JsonPropertyName("IP")] FlowIp Ip,
    [property: JsonPropertyName("l4")] FlowL4 L4,
    [property: JsonPropertyName("source")] FlowEndpoint Source,
    [property: JsonPropertyName("destination")] FlowEndpoint Destination,
    [property: JsonPropertyName("traffic_direction")] string TrafficDirection,
    [property: JsonPropertyName("policy_match_type")] string? PolicyMatchType,
    [property: JsonPropertyName("policy")] string? Policy,
    [property: JsonPropertyName("trace_reason")] string? TraceReason = null,
    [property: JsonPropertyName("is_reply")] bool? IsReply = null);

public sealed record FlowIp(
    [property: JsonPropertyName("source")] string Source,
    [property: JsonPropertyName("destination")] string Destination,
    [property: JsonPropertyName("ipVersion")] string IpVersion);

public sealed record FlowL4(
    [property: JsonPropertyName("TCP")] FlowPorts? Tcp = null,
    [property: JsonPropertyName("UDP")] FlowPorts? Udp = null,
    [property: JsonPropertyName("SCTP")] FlowPorts? Sctp = null,
    [property: JsonPropertyName("ICMPv4")] FlowIcmp? IcmpV4 = null,
    [property: JsonPropertyName("ICMPv6")] FlowIcmp? IcmpV6 = null);

public sealed record FlowPorts(
    [property: JsonPropertyName("source_port")] int SourcePort,
    [property: JsonPropertyName("destination_port")] int DestinationPort);

public sealed record FlowIcmp([property: JsonPropertyName("type")] int Type, [property: JsonPropertyName("code")] int Code);

public sealed record FlowEndpoint(
    [property: JsonPropertyName("identity")] uint Identity,
    [property: JsonPropertyName("namespace")] string? Namespace,
    [property: JsonPropertyName("pod_name")] string? PodName,
    [property: JsonPropertyName("labels")] IReadOnlyList<string> Labels);

/// <summary>The flow ring: its flows (oldest first), its capacity, and how many events the kernel could not deliver.</summary>
public sealed record FlowsResponse(IReadOnlyList<Flow> Flows, int Capacity, ulong EventsLost);

/// <summary>A node of the cluster as the store announces it.</summary>
public sealed record NodeOutput(string Name, string Address, IReadOnlyList<string> PodRanges);

/// <summary>A local cluster (<c>membrane cluster up</c>): its etcd members and nodes, kept in <c>DIR/cluster.json</c>.</summary>
public sealed record LocalClusterFile(string Directory, string RoutingMode, string UnderlayNamespace, IReadOnlyList<LocalEtcdMember> Etcd,
    IReadOnlyList<LocalClusterNode> Nodes)
{
    public string EtcdUrls => string.Join(",", Etcd.Select(m => m.ClientUrl));
}

public sealed record LocalEtcdMember(string Name, string ClientUrl, string PeerUrl, string DataDirectory, int Pid);

/// <summary>A simulated node: its agent's socket, state, names and addresses.</summary>
public sealed record LocalClusterNode(string Name, string Socket, string StateDirectory, string NamePrefix, string PinDirectory, int Pid,
    string UnderlayAddress, string PodIPv4Range, string PodIPv6Range);

/// <summary><c>membrane cluster status</c>: every member and node, and what each node's agent says.</summary>
public sealed record LocalClusterStatus(string Directory, string RoutingMode, IReadOnlyList<LocalEtcdMemberStatus> Etcd,
    IReadOnlyList<LocalNodeStatus> Nodes);

public sealed record LocalEtcdMemberStatus(string Name, string ClientUrl, int Pid, bool Running, bool Healthy);

public sealed record LocalNodeStatus(string Name, string Socket, int Pid, bool Running, string Health, IReadOnlyList<string> Reasons,
    long EnforcedRevision, int Endpoints, int RemoteEndpoints);

/// <summary>How full one BPF map is: a change that would overflow it is refused.</summary>
public sealed record MapFillOutput(string Name, long Entries, long MaxEntries, double Percent);

public sealed record ManifestRequest(string? Yaml, string? File);

public sealed record ObjectChange([property: JsonPropertyName("object")] string ObjectName, string Action);

/// <summary>What a change did; in cluster mode <see cref="Node"/> names the node that committed it (the CLI then waits).</summary>
public sealed record ApplyResponse(long Revision, IReadOnlyList<ObjectChange> Changes, string? Node = null);

public sealed record PolicyItem(string Kind, string? Namespace, string Name, string Yaml);

public sealed record PolicyListResponse(long Revision, IReadOnlyList<PolicyItem> Policies);

public sealed record TraceQuery(string From, string To, string Protocol, int? Port, string? IcmpType, int? IcmpCode, string? Family);

public sealed record TraceSideOutput(
    string Direction, string Endpoint, uint PeerIdentity, bool Enforced, IReadOnlyList<string> SelectedBy,
    string Verdict, string Reason, string? MatchedEntry, string? MatchKind, IReadOnlyList<string> Rules);

public sealed record TraceOutput(
    string From, string To, string Protocol, int? Port, int? IcmpType, int? IcmpCode, string Family,
    uint SourceIdentity, uint DestinationIdentity, TraceSideOutput Egress, TraceSideOutput Ingress, string Verdict,
    string? Text = null, IReadOnlyList<string>? AuditedBy = null, string? CheckedAt = null);

public sealed record EndpointOutput(
    int Id, string Pod, uint Identity, IReadOnlyList<string> Labels, string? IPv4, string? IPv6, string Interface,
    string Netns, bool IngressEnforced, bool EgressEnforced, int PolicyEntries, IReadOnlyList<string> SelectedBy, string? Node = null,
    bool PolicyAudit = false, bool Remote = false);

/// <summary><c>membrane endpoint config ID [SETTING=VALUE...]</c>: the settings to change (none: only show them).</summary>
public sealed record EndpointConfigRequest(string? Id, IReadOnlyDictionary<string, string>? Settings = null);

/// <summary>An endpoint's settings; <c>AgentPolicyAuditMode</c> is the agent-wide option, which applies to every endpoint.</summary>
public sealed record EndpointConfigOutput(int Id, string Pod, IReadOnlyDictionary<string, string> Settings, bool AgentPolicyAuditMode)
{
    public const string PolicyAuditMode = nameof(PolicyAuditMode);
    public const string Enabled = nameof(Enabled);
    public const string Disabled = nameof(Disabled);
}

public sealed record IdentityOutput(uint Id, string Kind, IReadOnlyList<string> Labels, IReadOnlyList<string> Endpoints);

public sealed record BpfPolicyEntryOutput(
    string Direction, uint Identity, string Labels, string PortProtocol, string Verdict, string MatchKind,
    ulong Packets, ulong Bytes, string DerivedFrom);

public sealed record BpfPolicyOutput(int Endpoint, string Pod, IReadOnlyList<BpfPolicyEntryOutput> Entries);

public sealed record ConntrackOutput(
    string Endpoint, string Protocol, string Source, string Destination, string Direction, double? AgeSeconds,
    double? IdleSeconds, ulong Packets, ulong Bytes, string Flags);

public sealed record ConntrackFlushOutput(int Removed);

/// <summary>One endpoint's conntrack tables: entries per family against each table's capacity (its own budget).</summary>
/// <param name="MemoryBytes">Kernel memory of the endpoint's conntrack tables and fragment table (preallocated: the same
/// whether they are full or empty).</param>
public sealed record ConntrackUsageOutput(string Endpoint, long IPv4, long IPv6, long Capacity, double PercentFull, long MemoryBytes);

public sealed record IpCacheOutput(string Prefix, uint Identity, string Name);

public sealed record MonitorEvent(
    DateTimeOffset Time, string Type, string Endpoint, string Direction, uint PeerIdentity, string Peer,
    string Protocol, string Source, string Destination, int? SourcePort, int? DestinationPort, int? IcmpType,
    int? IcmpCode, string? IcmpName, string Verdict, string Reason, string MatchKind, string? Rule);

/// <summary>
/// A probe. <see cref="MessageId"/> asks the source's agent only to send a one-way ICMP message with that identifier
/// (again every 50 ms until the timeout) while the destination's node watches for it (<see cref="ProbeWatchQuery"/>).
/// </summary>
public sealed record ProbeQuery(
    string From, string To, string Protocol, int? Port, string? IcmpType, int? IcmpCode, string? Family, int? TimeoutMs,
    int? MessageId = null);

/// <summary>Watch a pod of this node for an ICMP message of <see cref="IcmpType"/> carrying identifier <see cref="MessageId"/>.</summary>
public sealed record ProbeWatchQuery(string Pod, string Family, int IcmpType, int MessageId, int? TimeoutMs);

public sealed record ProbeWatchResult(bool Seen, string Detail);

public sealed record ProbeResult(
    string From, string To, string Protocol, int? Port, int? IcmpType, string Family, string Result, string Detail,
    double Milliseconds);

public sealed record MatrixQuery(string? Protocol, int? Port, string? Family, IReadOnlyList<string>? Namespaces, int? TimeoutMs);

public sealed record MatrixResponse(IReadOnlyList<string> Pods, IReadOnlyList<ProbeResult> Results, double Milliseconds);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ErrorResponse))]
[JsonSerializable(typeof(StatusResponse))]
[JsonSerializable(typeof(LocalClusterFile))]
[JsonSerializable(typeof(DryRunRequest))]
[JsonSerializable(typeof(FlowsResponse))]
[JsonSerializable(typeof(EndpointConfigRequest))]
[JsonSerializable(typeof(EndpointConfigOutput))]
[JsonSerializable(typeof(Flow))]
[JsonSerializable(typeof(DryRunResponse))]
[JsonSerializable(typeof(LocalClusterStatus))]
[JsonSerializable(typeof(List<NodeOutput>))]
[JsonSerializable(typeof(ManifestRequest))]
[JsonSerializable(typeof(ApplyResponse))]
[JsonSerializable(typeof(ClusterEnforcementOutput))]
[JsonSerializable(typeof(PolicyListResponse))]
[JsonSerializable(typeof(TraceQuery))]
[JsonSerializable(typeof(TraceOutput))]
[JsonSerializable(typeof(List<EndpointOutput>))]
[JsonSerializable(typeof(EndpointOutput))]
[JsonSerializable(typeof(List<IdentityOutput>))]
[JsonSerializable(typeof(BpfPolicyOutput))]
[JsonSerializable(typeof(List<ConntrackOutput>))]
[JsonSerializable(typeof(ConntrackFlushOutput))]
[JsonSerializable(typeof(List<ConntrackUsageOutput>))]
[JsonSerializable(typeof(List<IpCacheOutput>))]
[JsonSerializable(typeof(MonitorEvent))]
[JsonSerializable(typeof(ProbeQuery))]
[JsonSerializable(typeof(ProbeResult))]
[JsonSerializable(typeof(ProbeWatchQuery))]
[JsonSerializable(typeof(ProbeWatchResult))]
[JsonSerializable(typeof(MatrixQuery))]
[JsonSerializable(typeof(MatrixResponse))]
[JsonSerializable(typeof(CniAttachmentRequest))]
[JsonSerializable(typeof(CniAddResponse))]
[JsonSerializable(typeof(CniGcRequest))]
public sealed partial class AgentJsonContext : JsonSerializerContext;

/// <summary>
/// One container's attachment as a CNI plugin reports it to the agent (container id + interface name). An ADD with a
/// <see cref="PrevResult"/> is chained: the interface is the earlier plugin's.
/// </summary>
/// <summary>A runtime's ADD/DEL/CHECK as the plugin forwards it; <see cref="Network"/> is the configuration's <c>name</c>.</summary>
public sealed record CniAttachmentRequest(
    string ContainerId, string InterfaceName, string? Netns, string PodNamespace, string? PodName, string? PrevResult,
    string CniVersion = "1.0.0", string? Network = null);

/// <summary>The CNI result JSON the plugin prints for an ADD.</summary>
public sealed record CniAddResponse(string Result);

public sealed record CniAttachmentKey(string ContainerId, string InterfaceName);

/// <summary>GC: every attachment not in <see cref="ValidAttachments"/> is removed.</summary>
/// <summary>A runtime's GC: the attachments of <see cref="Network"/> it still has; the others of that network go.</summary>
public sealed record CniGcRequest(IReadOnlyList<CniAttachmentKey> ValidAttachments, string? Network = null);
