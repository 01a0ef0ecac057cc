namespace Membrane.Policy.Api;

/// <summary>A validation error: which file, which object, which field, and what is wrong.</summary>
public sealed record PolicyError(string File, string ObjectName, string Path, string Message, int Line, int Column)
{
    public override string ToString()
    {
        var where = ObjectName.Length == 0 ? File : $"{File}: {ObjectName}";
        return Path.Length == 0 ? $"{where}: {Message}" : $"{where}: {Path}: {Message}";
    }
}

/// <summary>Thrown by the engine when input is invalid; carries every error found.</summary>
public sealed class PolicyValidationException(IReadOnlyList<PolicyError> errors)
    : Exception(string.Join(Environment.NewLine, errors.Select(e => e.ToString())))
{
    public IReadOnlyList<PolicyError> Errors { get; } = errors;
}
