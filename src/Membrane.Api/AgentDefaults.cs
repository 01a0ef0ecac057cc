namespace Membrane.Api;

/// <summary>Where an agent lives when nothing else is said: shared by the agent, the CLI and runtime plugins.</summary>
public static class AgentDefaults
{
    public const string StateDirectory = "/var/lib/membrane";

    public const string PinDirectory = "/sys/fs/bpf/membrane";

    public const string NamePrefix = "mbr";

    /// <summary>The API socket of an agent whose state is in <paramref name="stateDirectory"/> (mode 0600, root only).</summary>
    public static string SocketPath(string stateDirectory) => Path.Combine(stateDirectory, "membrane.sock");

    /// <summary>Largest request body: a YAML text at its limit, JSON-escaped, fits.</summary>
    public const long MaxRequestBytes = 16L * 1024 * 1024;
}
