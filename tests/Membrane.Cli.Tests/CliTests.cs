using System.Text.Json;
using Membrane.Cli;

namespace Membrane.Cli.Tests;

public sealed class CliTests
{
    private static string Examples => Path.Combine(AppContext.BaseDirectory, "examples");
    private static string Corpus => Path.Combine(AppContext.BaseDirectory, "Corpus", "invalid");

    private static (int Code, string Out, string Err) Run(params string[] args)
    {
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        var code = CliApp.Run(args, stdout, stderr);
        return (code, stdout.ToString(), stderr.ToString());
    }

    [Fact]
    public void VersionNamesTheBuildAndTheKernelFeatures()
    {
        var (code, output, _) = Run("version");
        Assert.Equal(0, code);
        Assert.Matches(@"^membrane \d+\.\d+\.\d+ \(commit ([0-9a-f]{7,}|unknown)\)", output);
        Assert.Contains("BTF ", output, StringComparison.Ordinal);
        var (jsonCode, json, _) = Run("version", "-o", "json");
        Assert.Equal(0, jsonCode);
        using var doc = System.Text.Json.JsonDocument.Parse(json);
        Assert.True(doc.RootElement.GetProperty("features").TryGetProperty("ringbuf", out _));
        Assert.Equal(File.ReadAllText("/proc/sys/kernel/osrelease").Trim(), doc.RootElement.GetProperty("kernel").GetString());
    }

    [Fact]
    public void BpfVerifyListsEveryProgramOfEveryObjectInAlignedColumns()
    {
        var (code, output, err) = Run("bpf", "verify");
        Assert.True(code == 0, err);
        var lines = output.Split('\n', StringSplitOptions.RemoveEmptyEntries)[1..];
        var processedEnd = lines[0].IndexOf("PROCESSED", StringComparison.Ordinal) + "PROCESSED".Length;
        foreach (var row in lines[1..])
        {
            Assert.True(char.IsDigit(row[processedEnd - 1]) && (row.Length == processedEnd || row[processedEnd] == ' '),
                $"the processed count is not under its header:\n{lines[0]}\n{row}");
        }
        var objects = Directory.GetFiles(Path.Combine(AppContext.BaseDirectory, "bpf"), "*.o").Select(Path.GetFileName).Order();
        Assert.Equal(objects, lines[1..^1].Select(l => l.Split(' ')[0]).Distinct().Order());
        Assert.StartsWith("total ", lines[^1], StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateAcceptsTheExamples()
    {
        var (code, output, _) = Run("policy", "validate", Examples);
        Assert.Equal(0, code);
        Assert.StartsWith("valid:", output, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateRejectsWithPreciseErrorsAndExitOne()
    {
        var (code, _, err) = Run("policy", "validate", Path.Combine(Corpus, "01-icmp-unknown-name-v4.yaml"));
        Assert.Equal(1, code);
        Assert.Contains("CiliumNetworkPolicy/default/bad: spec.egress[0].icmps[0].fields[1].type: \"Foo\" is not an ICMP type of family " +
            "IPv4", err, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateJsonListsErrors()
    {
        var (code, output, _) = Run("policy", "validate", "-o", "json", Path.Combine(Corpus, "09-icmp-with-toports.yaml"));
        Assert.Equal(1, code);
        using var doc = JsonDocument.Parse(output);
        Assert.False(doc.RootElement.GetProperty("valid").GetBoolean());
        var error = doc.RootElement.GetProperty("errors")[0];
        Assert.Equal("spec.ingress[0]", error.GetProperty("path").GetString());
        Assert.Equal("CiliumNetworkPolicy/default/bad", error.GetProperty("object").GetString());
    }

    [Theory]
    [InlineData("l4-http-only.yaml", "tcp", "--port", "80", 0)]
    [InlineData("l4-http-only.yaml", "icmp", "--icmp-type", "8", 1)]
    [InlineData("icmp-echo.yaml", "icmp", "--icmp-type", "EchoRequest", 0)]
    [InlineData("icmp-echo.yaml", "icmp", "--icmp-type", "0", 1)]
    [InlineData("icmp-echo.yaml", "icmpv6", "--icmp-type", "128", 0)]
    [InlineData("icmp-deny.yaml", "icmp", "--icmp-type", "Timestamp", 1)]
    public void TraceExitsZeroForAllowedOneForDenied(string policy, string protocol, string option, string value, int expected)
    {
        var (code, output, err) = Run("policy", "trace", "--policies", Path.Combine(Examples, "policies", policy),
            "--workloads", Path.Combine(Examples, "workloads"), "--from", "demo/client", "--to", "demo/web", "--protocol", protocol,
                option, value);
        Assert.True(expected == code, output + err);
        Assert.Contains($"Final verdict: {(expected == 0 ? "ALLOWED" : "DENIED")}", output, StringComparison.Ordinal);
    }

    [Fact]
    public void TraceJsonCarriesBothSidesAndTheRule()
    {
        var (code, output, _) = Run("policy", "trace", "--policies", Path.Combine(Examples, "policies", "l4-http-only.yaml"),
            "--workloads", Path.Combine(Examples, "workloads"), "--from", "demo/client", "--to", "demo/web", "--protocol", "tcp", "--port",
                "80", "-o", "json");
        Assert.Equal(0, code);
        using var doc = JsonDocument.Parse(output);
        Assert.Equal("ALLOWED", doc.RootElement.GetProperty("verdict").GetString());
        Assert.Contains("CiliumNetworkPolicy/demo/web-http-only: spec.ingress[0]", doc.RootElement.GetProperty("ingress")
            .GetProperty("rules")[0].GetString(), StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("--protocol", "icmp")]
    [InlineData("--protocol", "tcp")]
    [InlineData("--protocol", "icmp", "--icmp-type", "Bogus")]
    [InlineData("--protocol", "tcp", "--port", "70000")]
    [InlineData("--protocol", "icmp", "--icmp-type", "8", "--port", "80")]
    [InlineData("--protocol", "gre")]
    public void TraceRejectsBadFlowsWithExitTwo(params string[] flow)
    {
        var args = new[] { "policy", "trace", "--policies", Path.Combine(Examples, "policies"), "--workloads", Path.Combine(Examples,
            "workloads"),
            "--from", "demo/client", "--to", "demo/web" }.Concat(flow).ToArray();
        var (code, _, err) = Run(args);
        Assert.Equal(2, code);
        Assert.Contains("error", err, StringComparison.Ordinal);
    }

    [Theory]
    [InlineData("k8s:app=client,io.kubernetes.pod.namespace=demo", "icmp", 0)]
    [InlineData("app=client,io.kubernetes.pod.namespace=other", "icmp", 1)]
    [InlineData("app=client,io.kubernetes.pod.namespace=demo", "tcp", 0)]
    public void TraceAcceptsRawLabels(string from, string protocol, int expected)
    {
        string[] flow = protocol == "icmp" ? ["--protocol", "icmp", "--icmp-type", "8"] : ["--protocol", "tcp", "--port", "80"];
        var (code, output, err) = Run(["policy", "trace", "--policies", Path.Combine(Examples, "policies", "l4-http-only.yaml"),
            Path.Combine(Examples, "policies", "icmp-echo.yaml"),
            "--workloads", Path.Combine(Examples, "workloads"), "--from", from, "--to", "demo/web", .. flow]);
        Assert.True(expected == code, output + err);
        Assert.Contains($"from {from} to demo/web", output, StringComparison.Ordinal);
    }

    [Fact]
    public void TraceOfUnknownPodIsAnError()
    {
        var (code, _, err) = Run("policy", "trace", "--policies", Path.Combine(Examples, "policies"), "--workloads", Path.Combine(Examples,
            "workloads"),
            "--from", "demo/nobody", "--to", "demo/web", "--protocol", "tcp", "--port", "80");
        Assert.Equal(2, code);
        Assert.Contains("no pod demo/nobody", err, StringComparison.Ordinal);
    }

    [Fact]
    public void ValidateReportsHostileFilesWithExitOne()
    {
        var file = Path.Combine(Path.GetTempPath(), $"membrane-limits-{Guid.NewGuid():N}.yaml");
        try
        {
            foreach (var yaml in new[] { HostileYaml.CyclicAlias, HostileYaml.BillionLaughs() })
            {
                File.WriteAllText(file, yaml);
                var stdout = new StringWriter();
                var stderr = new StringWriter();
                Assert.Equal(CliApp.Failure, CliApp.Run(["policy", "validate", file], stdout, stderr));
                Assert.Contains("nothing was loaded", stderr.ToString(), StringComparison.Ordinal);
            }
        }
        finally
        {
            File.Delete(file);
        }
    }

    [Fact]
    public void AgentWithoutItsExecutableSaysWhereItLookedAndExitsTwo()
    {
        var missing = Path.Combine(Path.GetTempPath(), $"membrane-agent-{Guid.NewGuid():N}");
        Environment.SetEnvironmentVariable("MEMBRANE_AGENT", missing);
        try
        {
            var (code, _, err) = Run("agent", "--state-dir", "/nonexistent");
            Assert.Equal(CliApp.Error, code);
            Assert.Contains($"MEMBRANE_AGENT names {missing}, which does not exist", err, StringComparison.Ordinal);
        }
        finally
        {
            Environment.SetEnvironmentVariable("MEMBRANE_AGENT", null);
        }
    }
}
