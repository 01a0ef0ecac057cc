using System.Text;
using System.Text.Json;
using Membrane.Api;
using Membrane.Policy.Api;

namespace Membrane.Policy.Tests.Api;

/// <summary>
/// Inputs afl++ found (tests/Membrane.Fuzz/run.sh) that made the loader throw instead of reporting an error —
/// `policy validate` died with them and the agent answered 500. Each must now load as invalid YAML, with a message.
/// </summary>
public sealed class FuzzRegressionTests
{
    private static string Corpus(string kind) => Path.Combine(AppContext.BaseDirectory, "Corpus", "fuzz", kind);

    public static TheoryData<string> Files(string kind) => [.. Directory.EnumerateFiles(Corpus(kind)).Select(f => Path.GetFileName(f))
        .Order()];

    public static TheoryData<string> YamlFiles => Files("yaml");

    public static TheoryData<string> ApiFiles => Files("api");

    [Theory]
    [MemberData(nameof(YamlFiles))]
    public void YamlThatCrashedTheLoaderIsAnError(string name)
    {
        var text = Encoding.UTF8.GetString(File.ReadAllBytes(Path.Combine(Corpus("yaml"), name)));
        var result = ManifestLoader.LoadText(text, name);
        Assert.False(result.IsValid);
        Assert.Contains(result.Errors, e => e.Message.StartsWith("malformed YAML", StringComparison.Ordinal));
    }

    [Theory]
    [MemberData(nameof(ApiFiles))]
    public void RequestsThatCrashedTheLoaderAreAnError(string name)
    {
        var request = JsonSerializer.Deserialize(File.ReadAllText(Path.Combine(Corpus("api"), name)),
            AgentJsonContext.Default.ManifestRequest);
        Assert.NotNull(request?.Yaml);
        var result = ManifestLoader.LoadText(request.Yaml, name);
        Assert.False(result.IsValid);
    }
}
