using System.Diagnostics;
using System.Text.Json;
using Membrane.Agent.Sandbox;
using Membrane.Api;

namespace Membrane.Agent.Tests.Monitoring;

/// <summary>
/// The agent's metrics as an operator uses them: a real Prometheus server (Debian's) scrapes an agent of its own;
/// after real echo requests that an L4 policy drops, a PromQL query through Prometheus's HTTP API shows the increase
/// of the kernel's drop counter for that reason and direction, and of the policy verdicts; the example alert rules
/// pass <c>promtool check rules</c>. Everything is removed afterwards.
/// </summary>
public sealed class MetricsTests : IDisposable
{
    private const string Prefix = "mbmet";
    private static readonly string State = Path.Combine(Path.GetTempPath(), "mbmet-state");
    private readonly string _prometheusDir = Path.Combine(Path.GetTempPath(), $"mbmet-prom-{Guid.NewGuid():N}"[..22]);
    private Process? _agent;
    private Process? _prometheus;

    private static (int Code, string Out, string Err) Cli(params string[] args) =>
        AgentUnderTest.Cli(Path.Combine(State, "membrane.sock"), args);

    private static double Query(HttpClient http, int port, string promql)
    {
        var json = http.GetStringAsync(new Uri($"http://127.0.0.1:{port}/api/v1/query?query={Uri.EscapeDataString(promql)}"))
            .GetAwaiter().GetResult();
        using var doc = JsonDocument.Parse(json);
        var result = doc.RootElement.GetProperty("data").GetProperty("result");
        return result.GetArrayLength() == 0 ? 0 : result.EnumerateArray().Sum(r =>
            double.Parse(r.GetProperty("value")[1].GetString()!, System.Globalization.CultureInfo.InvariantCulture));
    }

    [Fact]
    public void PrometheusSeesPolicyDropsOfRealTraffic()
    {
        Cleanup();
        var ports = LoopbackPorts.Reserve(2);
        var (metricsPort, promPort) = (ports[0], ports[1]);
        (_agent, var code, var stderr) = AgentUnderTest.Start(["--state-dir", State, "--name-prefix", Prefix, "--pin-dir",
            $"/sys/fs/bpf/{Prefix}",
            "--pod-ipv4-range", "10.231.0.0/16", "--pod-ipv6-range", "fd00:231::/64", "--metrics-address", $"127.0.0.1:{metricsPort}"],
            () => File.Exists(Path.Combine(State, "membrane.sock")) && Cli("status").Code == 0);
        Assert.True(_agent is not null, $"the agent did not start ({code}): {stderr}");
        using (var status = JsonDocument.Parse(Cli("status", "-o", "json").Out))
        {
            Assert.Equal($"127.0.0.1:{metricsPort}", status.RootElement.GetProperty("metrics").GetString());
            Assert.False(status.RootElement.GetProperty("metricsExposed").GetBoolean());
        }
        var workloads = Path.Combine(State, "w.yaml");
        File.WriteAllText(workloads, """
            apiVersion: v1
            kind: Namespace
            metadata: {name: met}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: client, namespace: met, labels: {app: client}}
            spec: {containers: [{name: c}]}
            ---
            apiVersion: v1
            kind: Pod
            metadata: {name: web, namespace: met, labels: {app: web}}
            spec: {containers: [{name: w, ports: [{containerPort: 80}]}]}
            ---
            apiVersion: cilium.io/v2
            kind: CiliumNetworkPolicy
            metadata: {name: web, namespace: met}
            spec:
              endpointSelector: {matchLabels: {app: web}}
              ingress: [{fromEndpoints: [{matchLabels: {app: client}}], toPorts: [{ports: [{port: "80", protocol: TCP}]}]}]
            """);
        Assert.Equal(0, Cli("apply", "-f", workloads).Code);

        Directory.CreateDirectory(_prometheusDir);
        File.WriteAllText(Path.Combine(_prometheusDir, "prometheus.yml"), $"""
            global: {"{"}scrape_interval: 1s, evaluation_interval: 1s{"}"}
            scrape_configs:
              - job_name: membrane
                static_configs: [{"{"}targets: ["127.0.0.1:{metricsPort}"]{"}"}]
            """);
        var start = new ProcessStartInfo("prometheus") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[] { "--config.file", Path.Combine(_prometheusDir, "prometheus.yml"), "--storage.tsdb.path",
                     Path.Combine(_prometheusDir, "data"), "--web.listen-address", $"127.0.0.1:{promPort}" })
        {
            start.ArgumentList.Add(a);
        }
        _prometheus = Process.Start(start)!;
        _prometheus.BeginErrorReadLine();
        _prometheus.BeginOutputReadLine();
        using var http = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
        // Prometheus is up and has scraped the agent at least twice before the traffic.
        Assert.True(LocalClusterWait(() =>
        {
            try
            {
                return Query(http, promPort, "count_over_time(membrane_forward_count_total{direction=\"INGRESS\"}[1m])") >= 2;
            }
            catch (HttpRequestException)
            {
                return false;
            }
        }), "Prometheus never scraped the agent");

        var denied = Cli("connectivity", "probe", "--from", "met/client", "--to", "met/web", "--protocol", "icmp", "--icmp-type",
            "EchoRequest");
        Assert.Equal(1, denied.Code);
        Assert.Equal(0, Cli("connectivity", "probe", "--from", "met/client", "--to", "met/web", "--protocol", "tcp", "--port", "80").Code);
        Assert.True(LocalClusterWait(() => Query(http, promPort,
            "increase(membrane_drop_count_total{reason=\"Policy denied\",direction=\"INGRESS\"}[1m])") > 0),
            "no increase of policy drops through Prometheus");
        Assert.True(LocalClusterWait(() => Query(http, promPort,
            "increase(membrane_policy_verdict_total{direction=\"INGRESS\",match=\"l3l4\",action=\"allow\"}[1m])") > 0),
            "no increase of allowed L3/L4 verdicts through Prometheus");
        // Audit mode: the same ping gets through and counts as an audit verdict, not a drop.
        Assert.Equal(0, Cli("endpoint", "config", "met/web", "PolicyAuditMode=Enabled").Code);
        Assert.Equal(0, Cli("connectivity", "probe", "--from", "met/client", "--to", "met/web", "--protocol", "icmp", "--icmp-type",
            "EchoRequest").Code);
        Assert.True(LocalClusterWait(() => Query(http, promPort,
            "increase(membrane_policy_verdict_total{direction=\"INGRESS\",match=\"none\",action=\"audit\"}[1m])") > 0),
            "no increase of audit verdicts through Prometheus");
        Assert.True(Query(http, promPort, "membrane_endpoint_state{endpoint_state=\"ready\"}") == 2);
        Assert.True(Query(http, promPort, "membrane_bpf_map_pressure{map_name=\"mb_policy\"}") > 0);
        Assert.True(Query(http, promPort, "sum(http_request_duration_seconds_count)") > 0, "API request durations are not measured");

        var rules = Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, "..", "..", "..", "..", "..", "examples", "prometheus",
            "membrane-alerts.yaml"));
        var check = Ip.Exec("promtool", ["check", "rules", rules], null);
        Assert.Contains("SUCCESS: 4 rules found", check, StringComparison.Ordinal);
    }

    private static bool LocalClusterWait(Func<bool> condition) => Cluster.LocalCluster.Eventually(condition, 60);

    private static void Cleanup() => AgentUnderTest.Cleanup(Prefix, State);

    public void Dispose()
    {
        foreach (var process in new[] { _prometheus, _agent })
        {
            if (process is { HasExited: false })
            {
                process.Kill();
                process.WaitForExit();
            }
            process?.Dispose();
        }
        Cleanup();
        if (Directory.Exists(_prometheusDir))
        {
            Directory.Delete(_prometheusDir, recursive: true);
        }
    }
}
