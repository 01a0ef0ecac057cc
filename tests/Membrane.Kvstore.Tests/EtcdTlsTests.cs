using System.Diagnostics;
using Etcdserverpb;
using Grpc.Core;
using Membrane.Api;

namespace Membrane.Kvstore.Tests;

/// <summary>
/// TLS to etcd as a production store runs it: a member serving https with client-certificate authentication. With
/// the CA and a client certificate the connection works; without the certificate, or trusting another CA, every call
/// fails; a scheme that does not match the configuration is refused before anything is sent.
/// </summary>
public sealed class EtcdTlsTests : IDisposable
{
    private readonly string _dir = Path.Combine(Path.GetTempPath(), $"mbetcd-tls-{Guid.NewGuid():N}"[..22]);
    private Process? _etcd;

    private void OpenSsl(params string[] args)
    {
        var start = new ProcessStartInfo("openssl")
        {
            RedirectStandardError = true,
            RedirectStandardOutput = true,
            WorkingDirectory = _dir
        };
        foreach (var a in args)
        {
            start.ArgumentList.Add(a);
        }
        using var p = Process.Start(start)!;
        p.StandardOutput.ReadToEnd();
        var error = p.StandardError.ReadToEnd();
        p.WaitForExit();
        Assert.True(p.ExitCode == 0, $"openssl {string.Join(' ', args)}: {error}");
    }

    private void Certificate(string name, string ca, string extensions)
    {
        File.WriteAllText(Path.Combine(_dir, $"{name}.ext"), extensions);
        OpenSsl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-keyout", $"{name}.key", "-out",
            $"{name}.csr", "-subj", $"/CN={name}");
        OpenSsl("x509", "-req", "-in", $"{name}.csr", "-CA", $"{ca}.pem", "-CAkey", $"{ca}.key", "-CAcreateserial", "-out", $"{name}.pem",
            "-days", "1", "-extfile", $"{name}.ext");
    }

    private void Authority(string name) => OpenSsl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
        "-keyout", $"{name}.key", "-out", $"{name}.pem", "-days", "1", "-subj", $"/CN={name}");

    private string F(string name) => Path.Combine(_dir, name);

    [Fact]
    public async Task MutualTlsWorksAndAnythingLessIsRefused()
    {
        Directory.CreateDirectory(_dir);
        Authority("ca");
        Authority("other-ca");
        Certificate("server", "ca", "subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n");
        Certificate("client", "ca", "extendedKeyUsage=clientAuth\n");
        var ports = LoopbackPorts.Reserve(2);
        var (client, peer) = (ports[0], ports[1]);
        var start = new ProcessStartInfo("etcd") { RedirectStandardError = true, RedirectStandardOutput = true };
        foreach (var a in new[]
                 {
                     "--name", "tls", "--data-dir", F("data"), "--listen-client-urls", $"https://127.0.0.1:{client}",
                     "--advertise-client-urls", $"https://127.0.0.1:{client}", "--listen-peer-urls", $"http://127.0.0.1:{peer}",
                     "--initial-advertise-peer-urls", $"http://127.0.0.1:{peer}", "--initial-cluster", $"tls=http://127.0.0.1:{peer}",
                     "--cert-file", F("server.pem"), "--key-file", F("server.key"), "--client-cert-auth", "--trusted-ca-file", F("ca.pem"),
                 })
        {
            start.ArgumentList.Add(a);
        }
        _etcd = Process.Start(start)!;
        _etcd.BeginErrorReadLine();
        _etcd.BeginOutputReadLine();
        var url = $"https://127.0.0.1:{client}";

        using var good = EtcdConnection.FromOption(url, TimeSpan.FromSeconds(2), new EtcdTls(F("ca.pem"), F("client.pem"),
            F("client.key")));
        var watch = Stopwatch.StartNew();
        while (true)
        {
            try
            {
                await good.PutAsync("membrane/tls", "yes");
                break;
            }
            catch (RpcException) when (watch.Elapsed < TimeSpan.FromSeconds(30))
            {
                await Task.Delay(100);
            }
        }
        var (items, _) = await good.ListAsync("membrane/tls");
        Assert.Equal("yes", items.Single().Value.ToStringUtf8());

        using var noClientCertificate = EtcdConnection.FromOption(url, TimeSpan.FromSeconds(2), new EtcdTls(F("ca.pem")));
        await Assert.ThrowsAsync<RpcException>(() => noClientCertificate.Client.GetAsync(new RangeRequest
        {
            Key = EtcdConnection.Bytes("membrane/tls"),
        }, deadline: DateTime.UtcNow.AddSeconds(3)));
        using var wrongAuthority = EtcdConnection.FromOption(url, TimeSpan.FromSeconds(2), new EtcdTls(F("other-ca.pem"), F("client.pem"),
            F("client.key")));
        await Assert.ThrowsAsync<RpcException>(() => wrongAuthority.Client.GetAsync(new RangeRequest
        {
            Key = EtcdConnection.Bytes("membrane/tls"),
        }, deadline: DateTime.UtcNow.AddSeconds(3)));

        Assert.Throws<ArgumentException>(() => EtcdConnection.FromOption(url)); // https without TLS files
        Assert.Throws<ArgumentException>(() => EtcdConnection.FromOption($"http://127.0.0.1:{client}", tls: new EtcdTls(F("ca.pem"))));
        var missing = Assert.Throws<ArgumentException>(() => EtcdConnection.FromOption(url, tls: new EtcdTls(F("absent.pem"))));
        Assert.Contains("etcd TLS files", missing.Message, StringComparison.Ordinal);
    }

    public void Dispose()
    {
        if (_etcd is { HasExited: false })
        {
            _etcd.Kill();
            _etcd.WaitForExit();
        }
        _etcd?.Dispose();
        if (Directory.Exists(_dir))
        {
            Directory.Delete(_dir, recursive: true);
        }
    }
}
