using System.CommandLine;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Hosting;

/// <summary>
/// <c>membrane-agent</c>: the daemon (the default command), <c>cleanup</c>, and the sandbox's own pod server. The
/// <c>membrane</c> CLI runs this executable for <c>membrane agent</c> and <c>membrane cleanup</c>, with the same
/// arguments. Exit status: 0 success, 2 the agent could not start (the message says why).
/// </summary>
public static class AgentCommandLine
{
    public const int Success = 0;
    public const int Error = 2;

    /// <summary>The agent's command line (and <c>cleanup</c>), without running anything: what the doc tests parse with.</summary>
    public static ParseResult Parse(string[] args) => Create().Parse(args);

    public static async Task<int> RunAsync(string[] args)
    {
        var result = Create().Parse(args);
        if (result.Errors.Count > 0)
        {
            foreach (var error in result.Errors)
            {
                await Console.Error.WriteLineAsync($"error: {ParseErrors.Plain(error.Message)}").ConfigureAwait(false);
            }
            await Console.Error.WriteLineAsync("Run 'membrane agent --help' for usage.").ConfigureAwait(false);
            return Error;
        }
        if (result.Action is System.CommandLine.Help.HelpAction)
        {
            // The parser names the root after the executable; users run it as `membrane agent`.
            using var help = new StringWriter(CultureInfo.InvariantCulture);
            var code = await result.InvokeAsync(new InvocationConfiguration { Output = help }).ConfigureAwait(false);
            var executable = System.Text.RegularExpressions.Regex.Escape(result.RootCommandResult.Command.Name);
            await Console.Out.WriteAsync(System.Text.RegularExpressions.Regex.Replace(help.ToString(), $@"^(\s+){executable}\b",
                "$1membrane agent", System.Text.RegularExpressions.RegexOptions.Multiline)).ConfigureAwait(false);
            return code;
        }
        return await result.InvokeAsync().ConfigureAwait(false);
    }

    private static RootCommand Create()
    {
        var stateDir = new Option<string>("--state-dir")
        {
            Description = "State directory (objects, endpoints, API socket)",
            DefaultValueFactory = _ => AgentDefaults.StateDirectory,
        };
        var pinDir = new Option<string>("--pin-dir")
        {
            Description = "bpffs directory for pinned maps",
            DefaultValueFactory = _ =>
            AgentDefaults.PinDirectory
        };
        var prefix = new Option<string>("--name-prefix")
        {
            Description = "Prefix of the network namespaces the sandbox creates",
            DefaultValueFactory = _ => AgentDefaults.NamePrefix,
        };
        var v4 = new Option<string>("--pod-ipv4-range")
        {
            Description = "IPv4 range for pod addresses",
            DefaultValueFactory = _ => AgentOptions.DefaultPodIPv4Range.ToString(),
        };
        var v6 = new Option<string>("--pod-ipv6-range")
        {
            Description = "IPv6 range for pod addresses",
            DefaultValueFactory = _ => AgentOptions.DefaultPodIPv6Range.ToString(),
        };
        var runtime = new Option<string>("--runtime")
        {
            Description = "Who makes pods: 'sandbox' (the agent, for each applied Pod) or 'cni' (container runtimes, through membrane-cni)",
            DefaultValueFactory = _ => "sandbox",
        }.OneOf(Choices.Of<AgentRuntime>());
        var cri = new Option<string?>("--cri-socket")
        {
            Description = "With --runtime cni: a CRI socket (containerd's) to read the labels of pods that have no Pod object",
        };
        var node = new Option<string?>("--node") { Description = "Cluster mode: this node's name (with --etcd)" };
        var etcd = new Option<string?>("--etcd")
        {
            Description = "Cluster mode: etcd client URLs (http://HOST:PORT[,…]) holding the cluster's objects (with --node)",
        };
        var leaseTtl = new Option<int>("--lease-ttl")
        {
            Description = "Cluster mode: seconds this node's keys outlive a killed agent (its lease's time to live)",
            DefaultValueFactory = _ => 15,
        };
        var etcdCa = new Option<string?>("--etcd-ca")
        {
            Description = "Cluster mode: TLS to etcd (https:// URLs): the CA certificate (PEM) the members' certificates chain to",
        };
        var etcdCert = new Option<string?>("--etcd-cert") { Description = "Cluster mode: this client's certificate (PEM) for etcd" };
        var etcdKey = new Option<string?>("--etcd-key") { Description = "Cluster mode: the key (PEM) of --etcd-cert" };
        var underlay = new Option<string?>("--underlay-address")
        {
            Description = "Cluster mode (sandbox): this node's IPv4 address on the underlay joining the nodes, with its prefix " +
                "(10.250.0.1/24)",
        };
        var underlayNetns = new Option<string>("--underlay-netns")
        {
            Description = "Cluster mode (sandbox): the namespace holding the underlay's bridge (shared by the local cluster's nodes)",
            DefaultValueFactory = _ => "membrane-underlay",
        };
        var routing = new Option<string>("--routing-mode")
        {
            Description = "Cluster mode: 'native' (routes to other nodes' pod prefixes) or 'tunnel' (VXLAN, identity in the VNI); " +
                "one mode per cluster",
            DefaultValueFactory = _ => "native",
        }.OneOf(Choices.Of<RoutingMode>());
        var hostRouting = new Option<string>("--host-routing")
        {
            Description = "How packets between pods travel: 'bpf' (the sender's hook judges the destination's ingress policy " +
                "too and delivers into its namespace; packets for other nodes' pods leave from the hook, by the node's route (native " +
                "routing) or wrapped in VXLAN by the hook itself (tunnel), and the receiver's underlay hook delivers them; the " +
                "nodes' nftables forward hook and tcpdump on " +
                "the destination's veth do not see them) or 'legacy' (forwarded by the nodes, judged on the destination's veth)",
            DefaultValueFactory = _ => "bpf",
        }.OneOf(Choices.Of<HostRouting>());
        var metrics = new Option<string>("--metrics-address")
        {
            Description = "Serve Prometheus metrics on HOST:PORT (/metrics), or 'off'",
            DefaultValueFactory = _ => AgentOptions.DefaultMetricsAddress,
        };
        var flowRing = new Option<int>("--flow-ring")
        {
            Description = "How many recent flows (drops, new allowed connections) to keep for 'membrane observe'; 0 keeps none " +
                "(and the kernel emits events only while a monitor listens)",
            DefaultValueFactory = _ => 4096,
        };
        var conntrackEntries = new Option<int>("--conntrack-entries-per-endpoint")
        {
            Description = "Connections each endpoint's own conntrack table holds per family (16 to 1,048,576); a full table evicts " +
                "that endpoint's oldest connections only. About 2 KiB of kernel memory per 8 entries of both families",
            DefaultValueFactory = _ => (int)Datapath.Maps.ConntrackTable.DefaultEndpointCapacity,
        };
        var policyEntries = new Option<int>("--policy-map-entries")
        {
            Description = "Entries of the policy map, for all endpoints together (16 to 4,194,304); a change that needs more is " +
                "refused on this node. Fixed once pinned",
            DefaultValueFactory = _ => (int)AgentOptions.DefaultPolicyMapEntries,
        };
        var audit = new Option<bool>("--policy-audit-mode")
        {
            Description = "Audit every endpoint: packets policy would drop are let through and reported as AUDIT (flows, metrics)",
        };
        var aggregation = new Option<string>("--monitor-aggregation")
        {
            Description = "Which packets become flows: 'medium' (drops, audits, new connections) or 'none' (every packet let " +
                "through too: established, replies, related ICMP errors; an event per packet)",
            DefaultValueFactory = _ => "medium",
        };
        aggregation.OneOf("medium", "none");
        var attach = new Option<string>("--attach")
        {
            Description = "How programs attach to pods' devices: 'tcx' (pinned BPF links, kernel 6.6+), 'clsact' (tc filters), or " +
                "'auto' (tcx where the kernel has it)",
            DefaultValueFactory = _ => "auto",
        };
        attach.OneOf("auto", "tcx", "clsact");
        var root = new RootCommand("membrane agent: run the agent (root): the sandbox, the datapath and the API. Exit status: 0 " +
            "when stopped, 2 on an error")
        {
            stateDir, pinDir, prefix, v4, v6, runtime, cri, node, etcd, leaseTtl, etcdCa, etcdCert, etcdKey, underlay, underlayNetns,
                routing, hostRouting, metrics, flowRing, conntrackEntries, policyEntries, audit, aggregation, attach,
        };
        root.SetAction(async (parse, cancel) =>
        {
            if (!IPNetwork.TryParse(parse.GetValue(v4)!, out var r4) || !IPNetwork.TryParse(parse.GetValue(v6)!, out var r6))
            {
                await Console.Error.WriteLineAsync("error: --pod-ipv4-range and --pod-ipv6-range must be CIDR prefixes")
                    .ConfigureAwait(false);
                return Error;
            }
            var options = new AgentOptions
            {
                StateDirectory = Path.GetFullPath(parse.GetValue(stateDir)!),
                PinDirectory = parse.GetValue(pinDir)!,
                NamePrefix = parse.GetValue(prefix)!,
                PodIPv4Range = r4,
                PodIPv6Range = r6,
                Runtime = Choices.Parse<AgentRuntime>(parse.GetValue(runtime)!),
                CriSocket = parse.GetValue(cri) is { Length: > 0 } socket ? Path.GetFullPath(socket) : null,
            };
            if (parse.GetValue(leaseTtl) is < 2 or > 3600)
            {
                await Console.Error.WriteLineAsync("error: --lease-ttl must be 2 to 3600 seconds").ConfigureAwait(false);
                return Error;
            }
            options = options with
            {
                Node = parse.GetValue(node),
                Etcd = parse.GetValue(etcd),
                LeaseTimeToLive = TimeSpan.FromSeconds(parse.GetValue(leaseTtl)),
            };
            if ((options.Node is null) != (options.Etcd is null))
            {
                await Console.Error.WriteLineAsync("error: cluster mode needs both --node NAME and --etcd URL[,URL…]")
                    .ConfigureAwait(false);
                return Error;
            }
            if (parse.GetValue(etcdCa) is { } ca)
            {
                options = options with
                {
                    EtcdTls = new Kvstore.EtcdTls(Path.GetFullPath(ca), parse.GetValue(etcdCert) is { } c ? Path.GetFullPath(c) : null,
                        parse.GetValue(etcdKey) is { } k ? Path.GetFullPath(k) : null),
                };
            }
            else if (parse.GetValue(etcdCert) is not null || parse.GetValue(etcdKey) is not null)
            {
                await Console.Error.WriteLineAsync("error: --etcd-cert and --etcd-key need --etcd-ca (TLS to etcd)").ConfigureAwait(false);
                return Error;
            }
            if ((parse.GetValue(etcdCert) is null) != (parse.GetValue(etcdKey) is null))
            {
                await Console.Error.WriteLineAsync("error: --etcd-cert and --etcd-key go together").ConfigureAwait(false);
                return Error;
            }
            try
            {
                using var check = options.Etcd is { } urls ? Kvstore.EtcdConnection.FromOption(urls, tls: options.EtcdTls) : null;
            }
            catch (ArgumentException e)
            {
                await Console.Error.WriteLineAsync($"error: --etcd: {e.Message.Split(" (Parameter")[0]}").ConfigureAwait(false);
                return Error;
            }
            if (options.Node is { } name && !System.Text.RegularExpressions.Regex.IsMatch(name, "^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$"))
            {
                await Console.Error.WriteLineAsync($"error: --node \"{name}\" is not a node name (lowercase letters, digits and '-')")
                    .ConfigureAwait(false);
                return Error;
            }
            if (parse.GetValue(underlay) is { } under)
            {
                var parts = under.Split('/');
                if (parts.Length != 2 || !IPAddress.TryParse(parts[0], out var underAddress)
                    || underAddress.AddressFamily != AddressFamily.InterNetwork
                    || !int.TryParse(parts[1], NumberStyles.None, CultureInfo.InvariantCulture, out var length) || length is < 8 or > 30)
                {
                    await Console.Error.WriteLineAsync($"error: --underlay-address \"{under}\" is not an IPv4 address with a prefix " +
                        "length of 8 to 30 (10.250.0.1/24)").ConfigureAwait(false);
                    return Error;
                }
                if (options.Node is null || options.Runtime != AgentRuntime.Sandbox)
                {
                    await Console.Error.WriteLineAsync("error: --underlay-address needs cluster mode (--node, --etcd) with the sandbox " +
                        "runtime")
                        .ConfigureAwait(false);
                    return Error;
                }
                options = options with { UnderlayAddress = underAddress, UnderlayPrefixLength = length };
            }
            options = options with
            {
                UnderlayNamespace = parse.GetValue(underlayNetns)!,
                RoutingMode = Choices.Parse<RoutingMode>(parse.GetValue(routing)!),
                HostRouting = Choices.Parse<HostRouting>(parse.GetValue(hostRouting)!)
            };
            if (parse.GetValue(flowRing) is < 0 or > 1_000_000)
            {
                await Console.Error.WriteLineAsync("error: --flow-ring must be 0 to 1,000,000 flows").ConfigureAwait(false);
                return Error;
            }
            if (parse.GetValue(conntrackEntries) is < 16 or > 1 << 20)
            {
                await Console.Error.WriteLineAsync("error: --conntrack-entries-per-endpoint must be 16 to 1,048,576").ConfigureAwait(false);
                return Error;
            }
            if (parse.GetValue(policyEntries) is < 16 or > 1 << 22)
            {
                await Console.Error.WriteLineAsync("error: --policy-map-entries must be 16 to 4,194,304").ConfigureAwait(false);
                return Error;
            }
            options = options with
            {
                ConntrackEntriesPerEndpoint = (uint)parse.GetValue(conntrackEntries),
                PolicyMapEntries = (uint)parse.GetValue(policyEntries),
                FlowRingSize = parse.GetValue(flowRing),
                PolicyAuditMode = parse.GetValue(audit),
                FlowsEveryPacket = parse.GetValue(aggregation) == "none",
                AttachMode = parse.GetValue(attach) switch
                {
                    "tcx" => Datapath.Ebpf.AttachMode.Tcx,
                    "clsact" => Datapath.Ebpf.AttachMode.Clsact,
                    _ => null,
                },
            };
            var metricsAddress = parse.GetValue(metrics)!;
            if (metricsAddress == "off")
            {
                options = options with { MetricsAddress = null };
            }
            else if (!IPEndPoint.TryParse(metricsAddress, out var endpoint) || endpoint.Port == 0)
            {
                await Console.Error.WriteLineAsync($"error: --metrics-address \"{metricsAddress}\" is not HOST:PORT " +
                    "(127.0.0.1:9962) or 'off'")
                    .ConfigureAwait(false);
                return Error;
            }
            else
            {
                options = options with
                {
                    MetricsAddress = metricsAddress,
                    MetricsAddressRequired = parse.GetResult(metrics) is { Implicit: false },
                };
            }
            if (options.CriSocket is not null && options.Runtime != AgentRuntime.Cni)
            {
                await Console.Error.WriteLineAsync("error: --cri-socket needs --runtime cni").ConfigureAwait(false);
                return Error;
            }
            return await AgentProcess.RunAsync(options).ConfigureAwait(false);
        });
        root.Subcommands.Add(SandboxCleanup.Command());
        root.Subcommands.Add(PodServerProcess.Command());
        return root;
    }
}
