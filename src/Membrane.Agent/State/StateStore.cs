using System.Text.Json;
using System.Text.Json.Serialization;
using Membrane.Agent.Cni;

namespace Membrane.Agent.State;

/// <summary>An endpoint this node made: its interface and addresses, and its configuration (policy audit mode).</summary>
public sealed record EndpointRecord(string Key, string Netns, string HostInterface, int IfIndex, IReadOnlyList<string> Addresses,
    bool PolicyAudit = false);

/// <summary>An identity number the agent handed out, so a restart keeps the numbers the maps use.</summary>
public sealed record IdentityRecord(uint Id, string Labels);

public sealed record PersistedState
{
    /// <summary>Applied objects as YAML, keyed by <c>Kind/namespace/name</c>.</summary>
    public Dictionary<string, string> Objects { get; init; } = [];

    public Dictionary<string, EndpointRecord> Endpoints { get; init; } = [];

    public List<IdentityRecord> Identities { get; init; } = [];

    public long Revision { get; init; }

    /// <summary>Containers' interfaces handed over by runtimes (agent run with <c>--runtime cni</c>).</summary>
    public List<CniAttachment> Attachments { get; init; } = [];
}

[JsonSourceGenerationOptions(WriteIndented = true, PropertyNamingPolicy = JsonKnownNamingPolicy.CamelCase)]
[JsonSerializable(typeof(PersistedState))]
internal sealed partial class StateJsonContext : JsonSerializerContext;

/// <summary>
/// The agent's state on disk: one JSON file, readable by root only, replaced atomically (write, fsync, rename) with
/// the previous version kept as <c>state.json.bak</c>. A missing or unreadable file is never taken for "nothing":
/// the agent refuses to start and says how to recover, rather than silently dropping what the kernel enforces.
/// </summary>
public sealed class StateStore(string directory) : IStateFile
{
    private const UnixFileMode PrivateFile = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    public string FilePath => Path.Combine(directory, "state.json");

    public string BackupPath => FilePath + ".bak";

    /// <summary>Creates the directory (0700) or checks an existing one: root's own, a real directory, not writable by others.</summary>
    public static void EnsurePrivateDirectory(string path) => Api.SafeFiles.EnsurePrivateDirectory(path);

    /// <summary>
    /// Loads the state. <paramref name="enforcedEndpoints"/> is how many endpoints the pinned maps still enforce:
    /// with none and no file, this is a first start; otherwise a missing file is an error.
    /// </summary>
    public PersistedState Load(int enforcedEndpoints)
    {
        if (!File.Exists(FilePath))
        {
            if (File.Exists(BackupPath))
            {
                throw new InvalidOperationException($"the state file {FilePath} is missing but its backup exists: restore it with " +
                    $"'cp {BackupPath} {FilePath}' and start again (or remove the backup to start empty, which stops enforcing every " +
                        $"pod's policy)");
            }
            if (enforcedEndpoints > 0)
            {
                throw new InvalidOperationException($"the state file {FilePath} is missing, but the pinned maps still enforce policy for " +
                    $"{enforcedEndpoints} endpoint(s): starting empty would drop it. Restore the state file, or remove the sandbox with " +
                    "'membrane cleanup' (same --name-prefix, --pin-dir and --state-dir) and start again");
            }
            return new PersistedState();
        }
        PersistedState? state;
        try
        {
            state = JsonSerializer.Deserialize(File.ReadAllText(FilePath), StateJsonContext.Default.PersistedState);
        }
        catch (JsonException e)
        {
            throw Corrupt(e.Message);
        }
        if (state is null)
        {
            throw Corrupt("it holds null");
        }
        return state;
    }

    private InvalidOperationException Corrupt(string why) => new(
        $"the state file {FilePath} cannot be read ({why}). " + (File.Exists(BackupPath)
            ? $"Its previous version is {BackupPath}: restore it with 'cp {BackupPath} {FilePath}' and start again"
            : "There is no backup: remove the sandbox with 'membrane cleanup' (same --name-prefix, --pin-dir and --state-dir) and start " +
                "again"));

    public void Save(PersistedState state)
    {
        EnsurePrivateDirectory(directory);
        var temp = FilePath + ".tmp";
        // Created exclusively (never through a link someone left there), then renamed over the file.
        using (var stream = Api.SafeFiles.CreateExclusive(temp, PrivateFile))
        {
            JsonSerializer.Serialize(stream, state, StateJsonContext.Default.PersistedState);
            stream.Flush(flushToDisk: true);
        }
        if (File.Exists(FilePath))
        {
            // The previous version, replaced in one rename so a crash leaves one complete backup or the other.
            using (var backup = Api.SafeFiles.CreateExclusive(BackupPath + ".tmp", PrivateFile))
            {
                using var current = new FileStream(FilePath, FileMode.Open, FileAccess.Read);
                current.CopyTo(backup);
                backup.Flush(flushToDisk: true);
            }
            File.Move(BackupPath + ".tmp", BackupPath, overwrite: true);
        }
        File.Move(temp, FilePath, overwrite: true);
    }
}
