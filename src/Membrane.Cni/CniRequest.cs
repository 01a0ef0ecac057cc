namespace Membrane.Cni;

/// <summary>What a runtime passes in the environment (CNI 1.1.0, "Parameters").</summary>
public sealed record CniRequest(
    string Command, string? ContainerId, string? Netns, string? InterfaceName, IReadOnlyDictionary<string, string> Args, string? Path)
{
    public static readonly IReadOnlyList<string> Commands = ["ADD", "DEL", "CHECK", "VERSION", "STATUS", "GC"];

    /// <summary>The pod's namespace from CNI_ARGS (K8S_POD_NAMESPACE); runtimes that pass none (podman) mean <c>default</c>.</summary>
    public string PodNamespace => Args.GetValueOrDefault("K8S_POD_NAMESPACE") is { Length: > 0 } ns ? ns : "default";

    /// <summary>The pod's name from CNI_ARGS (K8S_POD_NAME), if the runtime passes it.</summary>
    public string? PodName => Args.GetValueOrDefault("K8S_POD_NAME") is { Length: > 0 } name ? name : null;

    /// <summary>Reads and checks the environment: each command gets the variables it needs, or error 4 naming the missing one.</summary>
    public static CniRequest FromEnvironment(Func<string, string?> environment)
    {
        ArgumentNullException.ThrowIfNull(environment);
        string? Get(string name) => environment(name) is { Length: > 0 } value ? value : null;
        var command = Get("CNI_COMMAND")
            ?? throw new CniException(CniErrorCode.InvalidEnvironment,
                "CNI_COMMAND is not set: this is a CNI plugin, run by a container runtime");
        if (!Commands.Contains(command))
        {
            throw new CniException(CniErrorCode.InvalidEnvironment,
                $"CNI_COMMAND \"{command}\" is unknown (expected {string.Join(", ", Commands)})");
        }
        var request = new CniRequest(command, Get("CNI_CONTAINERID"), Get("CNI_NETNS"), Get("CNI_IFNAME"), ParseArgs(Get("CNI_ARGS")),
            Get("CNI_PATH"));
        var required = command switch
        {
            "ADD" or "CHECK" => new[] { ("CNI_CONTAINERID", request.ContainerId), ("CNI_NETNS", request.Netns), ("CNI_IFNAME",
                request.InterfaceName) },
            "DEL" => [("CNI_CONTAINERID", request.ContainerId), ("CNI_IFNAME", request.InterfaceName)],
            _ => [],
        };
        foreach (var (name, value) in required)
        {
            if (value is null)
            {
                throw new CniException(CniErrorCode.InvalidEnvironment, $"{name} is not set; {command} needs it");
            }
        }
        return request;
    }

    /// <summary>CNI_ARGS: <c>K=V;K=V</c>. A pair without <c>=</c> is an error (the specification's format).</summary>
    public static IReadOnlyDictionary<string, string> ParseArgs(string? text)
    {
        var args = new Dictionary<string, string>(StringComparer.Ordinal);
        foreach (var pair in (text ?? "").Split(';', StringSplitOptions.RemoveEmptyEntries))
        {
            var eq = pair.IndexOf('=', StringComparison.Ordinal);
            if (eq <= 0)
            {
                throw new CniException(CniErrorCode.InvalidEnvironment, $"CNI_ARGS has \"{pair}\", not KEY=VALUE");
            }
            args[pair[..eq]] = pair[(eq + 1)..];
        }
        return args;
    }
}
