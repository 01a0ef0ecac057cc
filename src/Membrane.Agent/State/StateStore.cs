using System.Text.Json;
using System.Text.Json.Serialization;

namespace Membrane.Agent.State;

/// <summary>What the sandbox created for one pod.</summary>
public sealed record EndpointRecord(string Key, string Netns, string HostInterface, int IfIndex, string[] Addresses);

/// <summary>An identity number the agent handed out, so a restart keeps the numbers the maps use.</summary>
public sealed record IdentityRecord(uint Id, string Labels);

public sealed record PersistedState
{
    /// <summary>Applied objects as YAML, keyed by <c>Kind/namespace/name</c>.</summary>
    public Dictionary<string, string> Objects { get; init; } = [];

    public Dictionary<string, EndpointRecord> Endpoints { get; init; } = [];

    public List<IdentityRecord> Identities { get; init; } = [];

    public long Revision { get; init; }
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(PersistedState))]
internal sealed partial class StateJsonContext : JsonSerializerContext;

/// <summary>The agent's state on disk: one JSON file, replaced atomically (write, fsync, rename).</summary>
public sealed class StateStore(string directory)
{
    public string FilePath => Path.Combine(directory, "state.json");

    public PersistedState Load()
    {
        if (!File.Exists(FilePath))
        {
            return new PersistedState();
        }
        return JsonSerializer.Deserialize(File.ReadAllText(FilePath), StateJsonContext.Default.PersistedState)
            ?? throw new InvalidDataException($"{FilePath} is empty or not valid state");
    }

    public void Save(PersistedState state)
    {
        Directory.CreateDirectory(directory);
        var temp = FilePath + ".tmp";
        using (var stream = new FileStream(temp, FileMode.Create, FileAccess.Write, FileShare.None))
        {
            JsonSerializer.Serialize(stream, state, StateJsonContext.Default.PersistedState);
            stream.Flush(flushToDisk: true);
        }
        File.Move(temp, FilePath, overwrite: true);
    }
}
