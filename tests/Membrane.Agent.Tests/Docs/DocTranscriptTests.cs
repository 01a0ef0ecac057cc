using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace Membrane.Agent.Tests;

/// <summary>
/// The transcripts of docs/cli.md and docs/observe.md — "$ membrane …" and what it prints — and the shell blocks of
/// docs/troubleshooting.md (with the output block that follows) run in bash, in the doc's order, against an agent of
/// each doc's own (pods in their own namespaces and address ranges; the starting state a doc assumes made first). Each command must exit
/// as its output or comment says (1 where it shows a denial, a cut or invalid input, else 0), and every line the doc shows must be
/// printed, numbers aside (ids, addresses, ports, counters and times differ from run to run) and with "…" standing
/// for any text. Not run here: <c>membrane agent</c> (this fixture starts it) and <c>membrane bpf verify</c>
/// (VerifierTests compare that block with the build; its first line names the kernel of the machine that wrote it).
/// </summary>
[Collection(SandboxGroup.Name)]
public sealed partial class DocTranscriptTests : IDisposable
{
    // Pod ranges of its own as well: the other sandbox agents' pods must not share its addresses.
    private readonly DocAgent _agent = new("mbrf", "--pod-ipv4-range", "10.213.0.0/16", "--pod-ipv6-range", "fd00:213::/64");

    public void Dispose() => _agent.Dispose();

    /// <param name="Denied">A shell block's command whose comment says it is denied (exit status 1).</param>
    private sealed record Transcript(string Command, List<string> Shown, bool Denied = false);

    /// <summary>
    /// The doc's transcripts: every code block that starts with "$ " (its commands, continuations kept, and what each
    /// printed), and every shell block (```sh: a command a line; an output block right after it is the last one's).
    /// </summary>
    private static List<List<Transcript>> Blocks(string markdown)
    {
        var blocks = new List<List<Transcript>>();
        var lines = markdown.Split('\n');
        for (var i = 0; i < lines.Length; i++)
        {
            if (lines[i] == "```sh")
            {
                var commands = new List<Transcript>();
                for (i++; lines[i] != "```"; i++)
                {
                    var comment = lines[i].IndexOf(" #", StringComparison.Ordinal);
                    var command = (comment < 0 ? lines[i] : lines[i][..comment]).Trim();
                    if (command.Length > 0)
                    {
                        commands.Add(new Transcript(command, [],
                            comment >= 0 && lines[i][(comment + 2)..].Trim().StartsWith("denied", StringComparison.Ordinal)));
                    }
                }
                if (i + 1 < lines.Length && lines[i + 1] == "```")
                {
                    for (i += 2; lines[i] != "```"; i++)
                    {
                        commands[^1].Shown.Add(lines[i]);
                    }
                }
                blocks.Add(commands);
                continue;
            }
            if (lines[i] != "```" || i + 1 >= lines.Length || !lines[i + 1].StartsWith("$ ", StringComparison.Ordinal))
            {
                continue;
            }
            var block = new List<Transcript>();
            for (i++; lines[i] != "```"; i++)
            {
                if (lines[i].StartsWith("$ ", StringComparison.Ordinal))
                {
                    var command = new StringBuilder(lines[i][2..]);
                    while (lines[i].EndsWith('\\'))
                    {
                        command.Append('\n').Append(lines[++i]);
                    }
                    block.Add(new Transcript(command.ToString(), []));
                }
                else
                {
                    block[^1].Shown.Add(lines[i]);
                }
            }
            blocks.Add(block);
        }
        return blocks;
    }

    [GeneratedRegex(@"\d+(\.\d+)?")]
    private static partial Regex Number();

    [GeneratedRegex(@"\s+")]
    private static partial Regex Spaces();

    private static string Normal(string text) => Spaces().Replace(Number().Replace(text, "#"), " ").Trim();

    /// <summary>Whether a printed line is the shown one: the same words, any numbers, any text where it shows "…".</summary>
    private static bool Shows(string printed, string shown)
    {
        var pieces = shown.Split('…').Select(Normal).ToArray();
        var line = Normal(printed);
        if (!line.StartsWith(pieces[0], StringComparison.Ordinal))
        {
            return false;
        }
        var at = pieces[0].Length;
        foreach (var piece in pieces.Skip(1))
        {
            at = line.IndexOf(piece, at, StringComparison.Ordinal);
            if (at < 0)
            {
                return false;
            }
            at += piece.Length;
        }
        return pieces.Length > 1 || line.Length == at;
    }

    [GeneratedRegex(@"DROPPED\s+(\S+) ingress peer \d+ \((\S+)\) (ICMPv6|ICMP) type (\d+)")]
    private static partial Regex ShownDrop();

    /// <summary>
    /// What a shown <c>membrane monitor</c> saw happen while it listened: for each drop it shows, a probe of the same kind
    /// from the same peer to the same pod (its drop is the one the monitor prints).
    /// </summary>
    private static string DropsShown(Transcript monitor) => string.Concat(monitor.Shown.Select(l => ShownDrop().Match(l))
        .Where(m => m.Success)
        .Select(m => $"membrane connectivity probe --from {m.Groups[2].Value} --to {m.Groups[1].Value} " +
            $"--protocol {m.Groups[3].Value.ToLowerInvariant()} --icmp-type {m.Groups[4].Value} >/dev/null\n"));

    /// <summary>
    /// The state a doc starts from when it does not make it itself. troubleshooting.md asks why the client's ping is
    /// dropped: the demo workload with only web-http-only selecting web.
    /// </summary>
    private static readonly Dictionary<string, string> StartingState = new(StringComparer.Ordinal)
    {
        ["troubleshooting.md"] =
            "membrane apply -f examples/workloads/demo.yaml && membrane policy import examples/policies/l4-http-only.yaml",
    };

    [Theory]
    [InlineData("cli.md", 18)]
    [InlineData("observe.md", 6)]
    [InlineData("troubleshooting.md", 3)]
    public void TheTranscriptsRunAsShown(string doc, int transcripts)
    {
        var blocks = Blocks(File.ReadAllText(Path.Combine(DocScript.Root, "docs", doc)));
        if (StartingState.TryGetValue(doc, out var setup))
        {
            var made = DocScript.Bash(DocScript.Preamble(_agent.Socket) + "exec 2>&1\n" + setup + "\necho \"__setup $?\"\n");
            Assert.True(made.Contains("__setup 0", StringComparison.Ordinal), $"{doc}'s starting state:\n{made}");
        }
        var ran = 0;
        var wrong = new List<string>();
        foreach (var block in blocks)
        {
            var script = new StringBuilder(DocScript.Preamble(_agent.Socket)).AppendLine("exec 2>&1");
            var run = new List<Transcript>();
            foreach (var transcript in block)
            {
                if (transcript.Command is "membrane agent" or "membrane bpf verify")
                {
                    continue;
                }
                // Markers around each command's output; the status is handed on so that a shown "echo $?" reads it.
                script.AppendLine(CultureInfo.InvariantCulture, $"__s=$?; echo __begin {run.Count}; (exit $__s)");
                if (transcript.Command.StartsWith("membrane monitor", StringComparison.Ordinal))
                {
                    // It streams until stopped: listen while the drops it shows happen, until all are printed (deadline).
                    var monitor = transcript.Command["membrane ".Length..];
                    script.AppendLine(CultureInfo.InvariantCulture, $"{DocScript.Cli} {monitor} >\"$0.monitor\" 2>&1 &");
                    script.AppendLine("timeout 20 bash -c 'until grep -q Listening \"$0\"; do sleep 0.05; done' \"$0.monitor\"");
                    script.Append(DropsShown(transcript));
                    var drops = transcript.Shown.Count(l => ShownDrop().IsMatch(l));
                    script.AppendLine(CultureInfo.InvariantCulture,
                        $"timeout 20 bash -c 'until [ $(grep -c DROPPED \"$0\") -ge {drops} ]; do sleep 0.05; done' \"$0.monitor\"");
                    script.AppendLine("kill $!; wait; cat \"$0.monitor\"; rm -f \"$0.monitor\"; true");
                }
                else
                {
                    script.AppendLine(transcript.Command);
                }
                script.AppendLine(CultureInfo.InvariantCulture, $"echo __exit {run.Count} $?");
                run.Add(transcript);
            }
            var output = DocScript.Bash(script.ToString()).Replace(_agent.Prefix, "mbr", StringComparison.Ordinal);
            var lines = output.Split('\n');
            for (var i = 0; i < run.Count; i++)
            {
                var begin = Array.IndexOf(lines, $"__begin {i}");
                var end = Array.FindIndex(lines, l => l.StartsWith($"__exit {i} ", StringComparison.Ordinal));
                Assert.True(begin >= 0 && end > begin, $"'{run[i].Command}' never finished:\n{output}");
                var printed = lines[(begin + 1)..end];
                var text = string.Join('\n', printed);
                var code = int.Parse(lines[end].Split(' ')[2], CultureInfo.InvariantCulture);
                var shown = string.Join('\n', run[i].Shown);
                var denial = run[i].Denied || shown.Contains("\"result\": \"denied\"", StringComparison.Ordinal) ||
                    shown.Contains("): denied", StringComparison.Ordinal) || shown.Contains("\ninvalid: ", StringComparison.Ordinal) ||
                    shown.Contains("\nWOULD BE CUT", StringComparison.Ordinal);
                if (code != (denial ? 1 : 0))
                {
                    wrong.Add($"'{run[i].Command}' exited {code}, the doc implies {(denial ? 1 : 0)}:\n{text}");
                }
                foreach (var line in run[i].Shown.Where(l => l.Trim() is { Length: > 0 } t && t != "…"))
                {
                    if (!printed.Any(p => Shows(p, line)))
                    {
                        wrong.Add($"'{run[i].Command}': the doc shows\n  {line}\nit printed:\n{text}");
                    }
                }
                ran++;
            }
        }
        Assert.True(wrong.Count == 0, string.Join("\n\n", wrong));
        Assert.True(ran >= transcripts, $"only {ran} transcripts of {doc} ran");
    }
}
