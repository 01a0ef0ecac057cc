using System.CommandLine;
using System.Globalization;
using System.Net.Sockets;
using Membrane.Cli.Output;
using Membrane.Policy.Api;
using Membrane.Policy.Resolution;
using Membrane.Policy.Rules;
using Membrane.Policy.Tracing;

namespace Membrane.Cli.Commands;

/// <summary><c>membrane policy …</c>: offline validation and trace.</summary>
public static class PolicyCommands
{
    public static Command Create(CliOutput output)
    {
        var policy = new Command("policy", "Validate, import, inspect and trace network policies");
        policy.Subcommands.Add(Validate(output));
        policy.Subcommands.Add(Trace(output));
        return policy;
    }

    private static Command Validate(CliOutput output)
    {
        var paths = new Argument<string[]>("path") { Arity = ArgumentArity.OneOrMore, Description = "Files or directories of YAML documents" };
        var format = CliOutput.CreateFormatOption();
        var command = new Command("validate", "Check policy (and workload) files without applying them") { paths, format };
        command.SetAction(parse =>
        {
            var result = ManifestLoader.LoadPaths(parse.GetValue(paths)!);
            var m = result.Manifests;
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(Json.Write(new ValidateOutput(result.IsValid, m.Policies.Count, m.Namespaces.Count, m.Pods.Count,
                    result.Errors.Select(ErrorOutput.From).ToList()), CliJsonContext.Default.ValidateOutput));
            }
            else if (result.IsValid)
            {
                output.Out.WriteLine($"valid: {m.Policies.Count} policies, {m.Namespaces.Count} namespaces, {m.Pods.Count} pods");
            }
            else
            {
                foreach (var error in result.Errors)
                {
                    output.Err.WriteLine(error);
                }
                output.Err.WriteLine($"invalid: {result.Errors.Count} error(s); nothing was applied");
            }
            return result.IsValid ? CliApp.Success : CliApp.Failure;
        });
        return command;
    }

    private static Command Trace(CliOutput output)
    {
        var policies = new Option<string[]>("--policies") { Description = "Policy files or directories (offline trace)", AllowMultipleArgumentsPerToken = true };
        var workloads = new Option<string[]>("--workloads") { Description = "Namespace/Pod files or directories (offline trace)", AllowMultipleArgumentsPerToken = true };
        var from = new Option<string>("--from") { Description = "Source pod as NAMESPACE/POD", Required = true };
        var to = new Option<string>("--to") { Description = "Destination pod as NAMESPACE/POD", Required = true };
        var flow = new FlowOptions();
        var format = CliOutput.CreateFormatOption();
        var command = new Command("trace", "Explain whether a flow is allowed: the policies, the matching rule, the final verdict")
        {
            policies, workloads, from, to, format,
        };
        flow.AddTo(command);
        command.SetAction(parse =>
        {
            var paths = (parse.GetValue(policies) ?? []).Concat(parse.GetValue(workloads) ?? []).ToList();
            if (paths.Count == 0)
            {
                throw new CliException("offline trace needs --policies and --workloads (trace against a running agent is not available yet)");
            }
            var load = ManifestLoader.LoadPaths(paths);
            if (!load.IsValid)
            {
                foreach (var error in load.Errors)
                {
                    output.Err.WriteLine(error);
                }
                return CliApp.Error;
            }
            var engine = new PolicyEngine();
            engine.Apply(load.Manifests);
            var request = flow.Build(parse, Endpoint(parse.GetValue(from)!, "--from"), Endpoint(parse.GetValue(to)!, "--to"));
            foreach (var key in new[] { request.From, request.To })
            {
                if (engine.FindEndpoint(key) is null)
                {
                    throw new CliException($"no pod {key} in the workload files");
                }
            }
            var result = Tracer.Trace(engine, request);
            if (parse.GetValue(format) == "json")
            {
                output.Out.WriteLine(Json.Write(ToJson(result), CliJsonContext.Default.TraceOutput));
            }
            else
            {
                output.Out.Write(Tracer.Format(engine, result));
            }
            return result.Allowed ? CliApp.Success : CliApp.Failure;
        });
        return command;
    }

    private static string Endpoint(string text, string option)
    {
        var parts = text.Split('/');
        if (parts.Length != 2 || parts[0].Length == 0 || parts[1].Length == 0)
        {
            throw new CliException($"{option} \"{text}\" must be NAMESPACE/POD");
        }
        return text;
    }

    public static TraceOutput ToJson(TraceResult r)
    {
        static TraceSideOutput Side(DirectionTrace s) => new(s.Direction.ToString().ToLowerInvariant(), s.Endpoint, s.PeerIdentity,
            s.Enforced, s.SelectingPolicies, s.Allowed ? "ALLOWED" : "DENIED", s.Reason, s.MatchedKey, s.MatchKind, s.Rules);
        var q = r.Request;
        return new TraceOutput(q.From, q.To, IpProtocol.Name(q.Protocol).ToLowerInvariant(), q.IsIcmp ? null : q.Port,
            q.IsIcmp ? q.IcmpType : null, q.IcmpCode, q.Family == AddressFamily.InterNetworkV6 ? "ipv6" : "ipv4",
            r.SourceIdentity, r.DestinationIdentity, Side(r.Egress), Side(r.Ingress), r.Verdict);
    }
}

/// <summary>The flow options shared by trace and probe: protocol, port, ICMP type/code and family.</summary>
public sealed class FlowOptions
{
    private readonly Option<string> _protocol = new("--protocol") { Description = "tcp, udp, sctp, icmp or icmpv6", Required = true };
    private readonly Option<int?> _port = new("--port") { Description = "Destination port (tcp, udp, sctp)" };
    private readonly Option<string?> _icmpType = new("--icmp-type") { Description = "ICMP type: a number or a name such as EchoRequest" };
    private readonly Option<int?> _icmpCode = new("--icmp-code") { Description = "ICMP code (0-255)" };
    private readonly Option<string?> _family = new("--family") { Description = "ipv4 or ipv6 (default ipv4; icmpv6 implies ipv6)" };

    public void AddTo(Command command)
    {
        _protocol.AcceptOnlyFromAmong("tcp", "udp", "sctp", "icmp", "icmpv6");
        _family.AcceptOnlyFromAmong("ipv4", "ipv6");
        command.Options.Add(_protocol);
        command.Options.Add(_port);
        command.Options.Add(_icmpType);
        command.Options.Add(_icmpCode);
        command.Options.Add(_family);
    }

    public TraceRequest Build(ParseResult parse, string from, string to)
    {
        var protocolText = parse.GetValue(_protocol)!;
        var familyText = parse.GetValue(_family);
        var protocol = protocolText switch
        {
            "tcp" => IpProtocol.Tcp,
            "udp" => IpProtocol.Udp,
            "sctp" => IpProtocol.Sctp,
            "icmp" => familyText == "ipv6" ? IpProtocol.IcmpV6 : IpProtocol.Icmp,
            _ => IpProtocol.IcmpV6,
        };
        if (protocolText == "icmpv6" && familyText == "ipv4")
        {
            throw new CliException("--protocol icmpv6 needs --family ipv6");
        }
        var family = protocol == IpProtocol.IcmpV6 || familyText == "ipv6" ? AddressFamily.InterNetworkV6 : AddressFamily.InterNetwork;
        if (IpProtocol.IsIcmp(protocol))
        {
            if (parse.GetValue(_port) is not null)
            {
                throw new CliException("--port does not apply to ICMP; use --icmp-type");
            }
            var typeText = parse.GetValue(_icmpType) ?? throw new CliException("--icmp-type is required for ICMP");
            var icmpFamily = protocol == IpProtocol.Icmp ? IcmpFamily.IPv4 : IcmpFamily.IPv6;
            byte type;
            if (int.TryParse(typeText, NumberStyles.None, CultureInfo.InvariantCulture, out var number))
            {
                type = number is >= 0 and <= 255 ? (byte)number : throw new CliException($"--icmp-type {number} is out of range (0-255)");
            }
            else if (!IcmpTypes.TryParse(icmpFamily, typeText, out type))
            {
                throw new CliException($"--icmp-type \"{typeText}\" is not an ICMP type of family {icmpFamily}");
            }
            var code = parse.GetValue(_icmpCode);
            if (code is < 0 or > 255)
            {
                throw new CliException($"--icmp-code {code} is out of range (0-255)");
            }
            return new TraceRequest(from, to, protocol, 0, type, code is { } c ? (byte)c : null, family);
        }
        if (parse.GetValue(_icmpType) is not null || parse.GetValue(_icmpCode) is not null)
        {
            throw new CliException("--icmp-type and --icmp-code apply only to --protocol icmp or icmpv6");
        }
        var port = parse.GetValue(_port) ?? throw new CliException($"--port is required for {protocolText}");
        if (port is < 1 or > 65535)
        {
            throw new CliException($"--port {port} is out of range (1-65535)");
        }
        return new TraceRequest(from, to, protocol, (ushort)port, 0, null, family);
    }
}
