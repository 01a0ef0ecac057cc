using Membrane.Policy.Api;

namespace Membrane.Policy.Tests.Api;

/// <summary>
/// Small inputs that used to kill or stall the agent and the CLI (stack overflow, minutes of CPU, hundreds of MB):
/// each is now a precise error, found quickly, with nothing loaded.
/// </summary>
public sealed class LimitsTests
{
    private const string CyclicAlias = HostileYaml.CyclicAlias;

    private static string BillionLaughs() => HostileYaml.BillionLaughs();

    private static PolicyError SingleError(string yaml)
    {
        var result = ManifestLoader.LoadText(yaml, "hostile.yaml");
        Assert.False(result.IsValid);
        return Assert.Single(result.Errors);
    }

    [Fact]
    public void ACyclicAliasIsRefused()
    {
        Assert.Contains("refers to a node that contains it", SingleError(CyclicAlias).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void DeepNestingIsRefused()
    {
        var deep = "a: " + new string('[', 100_000) + new string(']', 100_000) + "\n";
        Assert.Contains("nesting deeper than 64 levels", SingleError(deep).Message, StringComparison.Ordinal);
        var deepBlock = string.Concat(Enumerable.Range(0, 200).Select(i => new string(' ', i) + "k:\n"));
        Assert.Contains("nesting deeper than 64 levels", SingleError(deepBlock).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void AliasExpansionIsBounded()
    {
        var laughs = BillionLaughs();
        Assert.InRange(laughs.Length, 500, 1000);
        Assert.Contains("more than 1,000,000 nodes once its aliases are expanded", SingleError(laughs).Message, StringComparison.Ordinal);
    }

    [Fact]
    public void OrdinaryAliasesStillWork()
    {
        var result = ManifestLoader.LoadText("""
            apiVersion: v1
            kind: List
            items:
            - &ns {apiVersion: v1, kind: Namespace, metadata: {name: a, labels: &l {team: x}}}
            - {apiVersion: v1, kind: Namespace, metadata: {name: b, labels: *l}}
            """, "aliases.yaml");
        Assert.True(result.IsValid, string.Join("\n", result.Errors));
        Assert.Equal(2, result.Manifests.Namespaces.Count);
    }

    [Fact]
    public void HugeAnnotationsAndObjectsAreRefused()
    {
        var annotation = $"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n  annotations: {{note: " +
            $"\"{new string('x', 300_000)}\"}}\n";
        var error = SingleError(annotation);
        Assert.Equal("metadata.annotations", error.Path);
        Assert.Contains("more than the 262,144", error.Message, StringComparison.Ordinal);

        var labels = string.Join(", ", Enumerable.Range(0, 100_000).Select(i => $"k{i}: v{i}"));
        var big = $"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: big\n  labels: {{{labels}}}\n";
        Assert.Contains("more than the 1,048,576 one object may have", SingleError(big).Message, StringComparison.Ordinal);

        var huge = new string('#', YamlLimits.MaxTextLength + 1);
        Assert.Contains("a file or request may have", SingleError(huge).Message, StringComparison.Ordinal);
    }
}
