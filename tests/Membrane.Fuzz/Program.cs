using System.Text.Json;
using Membrane.Api;
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
    default:
        Console.Error.WriteLine("usage: Membrane.Fuzz yaml|api   (run under afl-fuzz by tests/Membrane.Fuzz/run.sh)");
        return 2;
}
return 0;
