using System.Text.Json;
using Membrane.Agent;
using Membrane.Agent.Cni;
using Membrane.Api;
using Membrane.Cni;
using Membrane.Kvstore;
using Membrane.Policy.Api;
using Membrane.Policy.Tracing;
using SharpFuzz;

// One fuzz target per argument. Each must never throw: whatever it is given becomes errors, not exceptions.
// An exception that escapes is a crash to afl++, and its input becomes a regression test.
switch (args.FirstOrDefault())
{
    case "yaml":
        // The loader behind `policy validate`, `apply` and the agent's API.
        Fuzzer.OutOfProcess.Run(stream => ManifestLoader.LoadText(new StreamReader(stream).ReadToEnd(), "fuzz.yaml"));
        break;
    case "api":
        // The agent's request bodies: JSON into the API contracts, then what the agent does with them first.
        Fuzzer.OutOfProcess.Run(stream =>
        {
            var text = new StreamReader(stream).ReadToEnd();
            try
            {
                if (JsonSerializer.Deserialize(text, AgentJsonContext.Default.ManifestRequest) is { Yaml: { } yaml } request)
                {
                    ManifestLoader.LoadText(yaml, request.File ?? "request");
                }
            }
            catch (JsonException)
            {
                // Malformed JSON: the API answers 400 with this message.
            }
            try
            {
                if (JsonSerializer.Deserialize(text, AgentJsonContext.Default.TraceQuery) is { } query)
                {
                    FlowSpec.Parse(query.From, query.To, query.Protocol, query.Port, query.IcmpType, query.IcmpCode, query.Family);
                }
            }
            catch (Exception e) when (e is JsonException or ArgumentException)
            {
                // Malformed JSON or an inconsistent flow: 400 with the message.
            }
        });
        break;
    case "cni":
        // What a container runtime hands the plugin on stdin, then what the agent reads of it (prevResult's addresses).
        Fuzzer.OutOfProcess.Run(stream =>
        {
            var text = new StreamReader(stream).ReadToEnd();
            try
            {
                CniRequest.ParseArgs(text.Split('\n')[0]); // CNI_ARGS, from the environment
            }
            catch (CniException)
            {
                // A CNI error JSON on stdout.
            }
            try
            {
                var config = NetworkConfig.Parse(text, "/run/membrane/membrane.sock");
                if (config.PrevResult is { } previous)
                {
                    CniRequestCheck.PreviousAddresses(previous, "eth0");
                }
            }
            catch (Exception e) when (e is CniException or AgentInputException)
            {
                // A CNI error JSON on stdout (the plugin), a 400 (the agent).
            }
        });
        break;
    case "store":
        // Values other nodes (or anyone with store access) wrote: KEY-SUFFIX on the first line, the value after it; each
        // decoder returns null for what it does not take, and never throws.
        Fuzzer.OutOfProcess.Run(stream =>
        {
            var text = new StreamReader(stream).ReadToEnd();
            var cut = text.IndexOf('\n', StringComparison.Ordinal);
            var (suffix, value) = cut < 0 ? (text, "") : (text[..cut], text[(cut + 1)..]);
            ClusterIpCache.Parse(ClusterIpCache.Prefix + suffix, value);
            ClusterIpCache.ParseNode(ClusterIpCache.NodesPrefix + suffix, value);
            ClusterEnforcement.Parse(ClusterEnforcement.Prefix + suffix, value);
        });
        break;
    default:
        Console.Error.WriteLine("usage: Membrane.Fuzz yaml|api|cni|store   (run under afl-fuzz by tests/Membrane.Fuzz/run.sh)");
        return 2;
}
return 0;
