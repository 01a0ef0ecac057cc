using System.Text;
using System.Text.RegularExpressions;
using Membrane.Agent.Hosting;

namespace Membrane.Cli.Tests;

/// <summary>
/// Every <c>membrane …</c> command line in README.md and docs/*.md (fenced shell blocks, and inline code that is a command
/// rather than a syntax summary) parses with the real command tree — the agent's own for <c>agent</c> and <c>cleanup</c> —
/// and every YAML file such a line names exists in the repository.
/// </summary>
public sealed partial class DocCommandLineTests
{
    private static readonly string Root = Repository.Root;

    [GeneratedRegex(@"`(membrane [^`]+)`")]
    private static partial Regex InlineCommand();

    [GeneratedRegex(@"^[A-Z][A-Z0-9_/=.-]*$")]
    private static partial Regex Placeholder();

    /// <summary>Inline code names a command more often than it runs one: what it leaves out may be required.</summary>
    private static bool Matters(DocLine line, string error) => !line.Inline
        || !(error.Contains("is required", StringComparison.Ordinal) || error.StartsWith("Required", StringComparison.Ordinal));

    /// <summary>The command lines of one Markdown file: in fenced blocks (continuations joined), and inline commands.</summary>
    public static IEnumerable<DocLine> CommandLines(string file)
    {
        var name = Path.GetRelativePath(Root, file);
        var lines = File.ReadAllLines(file);
        var fenced = false;
        for (var i = 0; i < lines.Length; i++)
        {
            var line = lines[i];
            if (line.TrimStart().StartsWith("```", StringComparison.Ordinal))
            {
                fenced = !fenced;
                continue;
            }
            if (fenced)
            {
                var text = line.Trim();
                var start = i;
                while (text.EndsWith('\\') && i + 1 < lines.Length)
                {
                    text = text[..^1] + " " + lines[++i].Trim();
                }
                text = text.StartsWith("$ ", StringComparison.Ordinal) ? text[2..] : text;
                text = text.StartsWith("sudo ", StringComparison.Ordinal) ? text[5..] : text;
                // "membrane agent: listening on …" is output, and "--policies PATH... [-o json]" a syntax summary: no commands.
                if (text.StartsWith("membrane ", StringComparison.Ordinal) && !text.Split(' ', 3)[1].EndsWith(':')
                    && text.IndexOfAny(['[', '…', '<']) < 0 && !text.Contains("...", StringComparison.Ordinal))
                {
                    yield return new DocLine(name, start + 1, text);
                }
                continue;
            }
            foreach (Match m in InlineCommand().Matches(line))
            {
                var text = m.Groups[1].Value;
                // A syntax summary ([optional], a|b, …, <placeholder>, a PLACEHOLDER value) is no command line.
                if (text.IndexOfAny(['[', '|', '…', '<']) < 0 && !text.Contains("...", StringComparison.Ordinal)
                    && !text.Split(' ').Skip(1).Any(w => Placeholder().IsMatch(w)))
                {
                    yield return new DocLine(name, i + 1, text, Inline: true);
                }
            }
        }
    }

    public static IReadOnlyList<DocLine> AllCommandLines() => Directory.GetFiles(Path.Combine(Root, "docs"), "*.md")
        .Prepend(Path.Combine(Root, "README.md"))
        .SelectMany(CommandLines)
        .ToList();

    /// <summary>Shell words up to the end of the first command (a pipe, a redirection, a comment, &amp;&amp; or ;).</summary>
    public static List<string> Words(string text)
    {
        var words = new List<string>();
        var word = new StringBuilder();
        var inWord = false;
        char? quote = null;
        for (var i = 0; i < text.Length; i++)
        {
            var c = text[i];
            if (quote is { } q)
            {
                if (c == q)
                {
                    quote = null;
                }
                else
                {
                    word.Append(c);
                }
                continue;
            }
            if (c is '"' or '\'')
            {
                quote = c;
                inWord = true;
                continue;
            }
            if (char.IsWhiteSpace(c) || c is '|' or ';' or '&' or '>' or '#' && !inWord)
            {
                if (inWord)
                {
                    words.Add(word.ToString());
                    word.Clear();
                    inWord = false;
                }
                if (c is '|' or ';' or '&' or '>' or '#')
                {
                    break;
                }
                continue;
            }
            if (c == '>' || (c == '2' && i + 1 < text.Length && text[i + 1] == '>' && !inWord))
            {
                break;
            }
            word.Append(c);
            inWord = true;
        }
        if (inWord)
        {
            words.Add(word.ToString());
        }
        return words;
    }

    /// <summary>The parse errors of one command line, with the tree that runs it.</summary>
    public static IReadOnlyList<string> ParseErrors(IReadOnlyList<string> words)
    {
        ArgumentNullException.ThrowIfNull(words);
        var args = words.Skip(1).ToList(); // "membrane"
        var node = args.IndexOf("--node");
        if (node >= 0 && node + 1 < args.Count)
        {
            args.RemoveRange(node, 2);
        }
        if (args is ["agent", .. var agent])
        {
            return AgentCommandLine.Parse([.. agent]).Errors.Select(e => e.Message).ToList();
        }
        if (args is ["cleanup", ..])
        {
            return AgentCommandLine.Parse([.. args]).Errors.Select(e => e.Message).ToList();
        }
        var root = CliApp.Create(new CliOutput(TextWriter.Null, TextWriter.Null));
        return root.Parse([.. args]).Errors.Select(e => e.Message).ToList();
    }

    [Fact]
    public void TheDocsHaveCommandLines() => Assert.True(AllCommandLines().Count > 100, $"{AllCommandLines().Count} command lines found");

    [Fact]
    public void EveryCommandLineInTheDocsParses()
    {
        var failures = AllCommandLines()
            .Select(l => (Line: l, Errors: ParseErrors(Words(l.Text)).Where(e => Matters(l, e)).ToList()))
            .Where(r => r.Errors.Count > 0)
            .Select(r => $"{r.Line}\n    {string.Join("; ", r.Errors)}")
            .ToList();
        Assert.True(failures.Count == 0, $"{failures.Count} command lines in the docs do not parse:\n{string.Join('\n', failures)}");
    }

    [Fact]
    public void EveryFileACommandLineNamesExists()
    {
        var missing = new List<string>();
        foreach (var line in AllCommandLines())
        {
            foreach (var word in Words(line.Text).Where(w => w.EndsWith(".yaml", StringComparison.Ordinal)
                || w.EndsWith(".yml", StringComparison.Ordinal)))
            {
                if (word.Contains('$', StringComparison.Ordinal) || word.Contains('*', StringComparison.Ordinal)
                    || word.StartsWith('/') || word.Contains("FILE", StringComparison.Ordinal))
                {
                    continue; // a variable, a glob, a path on someone's machine or a placeholder
                }
                if (!File.Exists(Path.Combine(Root, word)))
                {
                    missing.Add($"{line}\n    {word} does not exist (from the repository's root)");
                }
            }
        }
        Assert.True(missing.Count == 0, $"{missing.Count} files named in the docs do not exist:\n{string.Join('\n', missing)}");
    }

    [Fact]
    public void TheInvalidExampleFailsAsCliMdShows()
    {
        using var stdout = new StringWriter();
        using var stderr = new StringWriter();
        var file = Path.Combine(Root, "examples", "invalid", "bad.yaml");
        Assert.Equal(1, CliApp.Run(["policy", "validate", file], stdout, stderr));
        var shown = File.ReadAllText(Path.Combine(Root, "docs", "cli.md"));
        var message = stderr.ToString().Split('\n')[0].Replace(file, "examples/invalid/bad.yaml", StringComparison.Ordinal);
        Assert.Contains(message, shown, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("membrane observe --verdict DROPPED | head", new[] { "membrane", "observe", "--verdict", "DROPPED" })]
    [InlineData("membrane policy import \"my file.yaml\" # import it", new[] { "membrane", "policy", "import", "my file.yaml" })]
    [InlineData("membrane status -o json > s.json", new[] { "membrane", "status", "-o", "json" })]
    [InlineData("membrane agent --state-dir $STATE &", new[] { "membrane", "agent", "--state-dir", "$STATE" })]
    public void CommandLinesAreSplitAsAShellWould(string text, string[] words) => Assert.Equal(words, Words(text));

    [Fact]
    public void AnInvalidLineIsCaught()
    {
        Assert.NotEmpty(ParseErrors(Words("membrane observe --no-such-option")));
        Assert.NotEmpty(ParseErrors(Words("membrane agent --no-such-option")));
        Assert.Empty(ParseErrors(Words("membrane agent --host-routing legacy")));
    }
}

/// <summary>A command line of the docs and where it is.</summary>
public sealed record DocLine(string File, int Line, string Text, bool Inline = false)
{
    public override string ToString() => $"{File}:{Line}: {Text}";
}
