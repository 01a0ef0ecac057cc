namespace Membrane.Cni;

/// <summary>The error codes of the CNI specification (1.1.0, "Error" section) that this plugin returns.</summary>
public static class CniErrorCode
{
    public const int IncompatibleVersion = 1;
    public const int UnsupportedField = 2;
    public const int UnknownContainer = 3;
    public const int InvalidEnvironment = 4;
    public const int IoFailure = 5;
    public const int DecodeFailure = 6;
    public const int InvalidNetworkConfig = 7;
    public const int TryAgainLater = 11;

    /// <summary>STATUS: the plugin cannot serve ADDs now.</summary>
    public const int NotAvailable = 50;
}

/// <summary>A CNI error: written as the specification's error JSON on stdout, with a non-zero exit status.</summary>
public sealed class CniException(int code, string message, string? details = null) : Exception(message)
{
    public int Code { get; } = code;

    public string? Details { get; } = details;
}
