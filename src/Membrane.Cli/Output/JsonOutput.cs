using System.Text.Json;
using System.Text.Json.Serialization;
using Membrane.Policy.Api;

namespace Membrane.Cli.Output;

public sealed record ValidateOutput(bool Valid, int Policies, int Namespaces, int Pods, IReadOnlyList<ErrorOutput> Errors);

public sealed record ErrorOutput(string File, [property: JsonPropertyName("object")] string ObjectName, string Path, string Message,
    int Line, int Column)
{
    public static ErrorOutput From(PolicyError e) => e is null ? throw new ArgumentNullException(nameof(e)) : new(e.File, e.ObjectName,
        e.Path, e.Message, e.Line, e.Column);
}

public sealed record VerifyProgramOutput([property: JsonPropertyName("object")] string ObjectFile, string Program,
    int ProcessedInstructions, int Instructions, int PeakStates, double LoadMilliseconds);

public sealed record VerifyOutput(string Kernel, IReadOnlyList<VerifyProgramOutput> Programs, int TotalProcessedInstructions, int Limit,
    string? Attachment = null);

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase,
    DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(ValidateOutput))]
[JsonSerializable(typeof(VerifyOutput))]
public sealed partial class CliJsonContext : JsonSerializerContext;

public static class Json
{
    public static string Write<T>(T value, System.Text.Json.Serialization.Metadata.JsonTypeInfo<T> info) =>
        JsonSerializer.Serialize(value, info);
}
