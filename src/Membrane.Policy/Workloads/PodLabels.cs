using Membrane.Policy.Api;

namespace Membrane.Policy.Workloads;

/// <summary>Pod labels that come from elsewhere than a validated manifest (a container runtime's record).</summary>
public static class PodLabels
{
    /// <summary>
    /// What is wrong with the labels as Kubernetes label keys and values, or null. Labels that break these rules
    /// could forge another label set's canonical form (a value holding ",k8s:key=value"), so they are refused whole.
    /// </summary>
    public static string? Check(IReadOnlyDictionary<string, string> labels)
    {
        ArgumentNullException.ThrowIfNull(labels);
        foreach (var (key, value) in labels)
        {
            if (Names.CheckLabelKey(key ?? "") is { } badKey)
            {
                return badKey;
            }
            if (Names.CheckLabelValue(value ?? "") is { } badValue)
            {
                return $"label {key}: {badValue}";
            }
        }
        return null;
    }
}
