using System.Text;

namespace Membrane.TestSupport;

/// <summary>Small YAML documents that used to kill or stall whoever loaded them.</summary>
public static class HostileYaml
{
    /// <summary>A list that contains itself through an alias.</summary>
    public const string CyclicAlias = "items: &a [ {apiVersion: v1, kind: List, items: *a} ]\nkind: List\napiVersion: v1\n";

    /// <summary>926 bytes of Lists repeated through aliases: 10^9 objects once expanded.</summary>
    public static string BillionLaughs()
    {
        var yaml = new StringBuilder("apiVersion: v1\nkind: List\nx0: &a0 {apiVersion: v1, kind: Namespace, metadata: {name: n}}\n");
        for (var i = 1; i <= 9; i++)
        {
            yaml.Append($"x{i}: &a{i} [");
            yaml.AppendJoin(", ", Enumerable.Repeat($"*a{i - 1}", 10));
            yaml.Append("]\n");
        }
        yaml.Append("items: *a9\n");
        return yaml.ToString();
    }
}
