using Membrane.Policy.Api;

namespace Membrane.Policy.Tests.Api;

/// <summary>Each file in Corpus/invalid states the field path and message its error must carry.</summary>
public sealed class InvalidCorpusTests
{
    private static string CorpusDirectory => Path.Combine(AppContext.BaseDirectory, "Corpus", "invalid");

    public static TheoryData<string> Files()
    {
        var data = new TheoryData<string>();
        foreach (var file in Directory.GetFiles(CorpusDirectory, "*.yaml").Order(StringComparer.Ordinal))
        {
            data.Add(Path.GetFileName(file));
        }
        return data;
    }

    [Fact]
    public void CorpusHasAtLeastFortyDocuments() => Assert.True(Files().Count >= 40, $"only {Files().Count} documents");

    [Theory]
    [MemberData(nameof(Files))]
    public void DocumentIsRejectedWithExactPath(string name)
    {
        var path = Path.Combine(CorpusDirectory, name);
        var lines = File.ReadAllLines(path);
        var expectedPath = lines[0]["# path:".Length..].Trim();
        var expectedMessage = lines[1]["# message:".Length..].Trim();

        var result = ManifestLoader.LoadPaths([path]);

        Assert.False(result.IsValid);
        Assert.Empty(result.Manifests.Policies);
        Assert.Contains(result.Errors, e => e.Path == expectedPath && e.Message.Contains(expectedMessage, StringComparison.Ordinal));
        Assert.All(result.Errors, e => Assert.Equal(path, e.File));
    }

    [Fact]
    public void ErrorTextNamesFileObjectAndField()
    {
        var path = Path.Combine(CorpusDirectory, "01-icmp-unknown-name-v4.yaml");
        var error = Assert.Single(ManifestLoader.LoadPaths([path]).Errors);
        Assert.Equal(
            $"{path}: CiliumNetworkPolicy/default/bad: spec.egress[0].icmps[0].fields[1].type: \"Foo\" is not an ICMP type of family IPv4",
            error.ToString());
        Assert.Equal(15, error.Line);
    }

    [Fact]
    public void OneBadDocumentRejectsTheWholeSet()
    {
        var dir = Directory.CreateTempSubdirectory();
        try
        {
            File.WriteAllText(Path.Combine(dir.FullName, "a-good.yaml"), """
                apiVersion: cilium.io/v2
                kind: CiliumNetworkPolicy
                metadata: {name: good}
                spec: {endpointSelector: {}, ingress: [{fromEntities: [cluster]}]}
                """);
            File.Copy(Path.Combine(CorpusDirectory, "05-icmp-type-too-big.yaml"), Path.Combine(dir.FullName, "b-bad.yaml"));
            var result = ManifestLoader.LoadPaths([dir.FullName]);
            Assert.False(result.IsValid);
            Assert.Empty(result.Manifests.Policies);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void MissingPathIsAnError() =>
        Assert.Contains(ManifestLoader.LoadPaths(["/nonexistent/policy.yaml"]).Errors, e => e.Message == "no such file or directory");
}
