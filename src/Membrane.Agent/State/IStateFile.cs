namespace Membrane.Agent.State;

/// <summary>Where the agent persists its state (<see cref="StateStore"/>); the change coordinator writes it after every change.</summary>
public interface IStateFile
{
    string FilePath { get; }

    /// <summary>Replaces the state on disk; throws <see cref="IOException"/> or <see cref="UnauthorizedAccessException"/> when it
    /// cannot.</summary>
    void Save(PersistedState state);
}
