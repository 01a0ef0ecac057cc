namespace Membrane.Cli.Tests;

/// <summary>The repository these tests check the docs and examples of.</summary>
internal static class Repository
{
    /// <summary>The directory of Membrane.slnx above the test's output.</summary>
    public static string Root { get; } = FindRoot();

    private static string FindRoot()
    {
        var dir = new DirectoryInfo(AppContext.BaseDirectory);
        while (dir is not null && !File.Exists(Path.Combine(dir.FullName, "Membrane.slnx")))
        {
            dir = dir.Parent;
        }
        return dir?.FullName
            ?? throw new InvalidOperationException("the repository root (Membrane.slnx) is not above the test's output");
    }
}
