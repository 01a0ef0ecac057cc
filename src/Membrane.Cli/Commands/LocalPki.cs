using System.Net;
using System.Net.Security;
using System.Security.Cryptography;
using System.Security.Cryptography.X509Certificates;
using Membrane.Api;

namespace Membrane.Cli.Commands;

/// <summary>
/// The local cluster's certificates: a CA of its own, one certificate for the etcd members (127.0.0.1, server and
/// peer), and a client certificate per node and for the CLI (CN = the name). Keys and certificates are 0600 in a
/// 0700 directory of the cluster's: etcd accepts only clients with a certificate of this CA, so no local user (nor
/// anything without these files) reads or writes the store.
/// </summary>
internal static class LocalPki
{
    public const string CliClient = Kvstore.ClusterAccess.Root;

    public static string Directory(string clusterDirectory) => Path.Combine(clusterDirectory, "pki");

    public static string Ca(string clusterDirectory) => Path.Combine(Directory(clusterDirectory), "ca.pem");

    public static string Certificate(string clusterDirectory, string name) => Path.Combine(Directory(clusterDirectory), $"{name}.pem");

    public static string Key(string clusterDirectory, string name) => Path.Combine(Directory(clusterDirectory), $"{name}-key.pem");

    /// <summary>Creates the CA, the etcd members' certificate and a client certificate for each name.</summary>
    public static void Create(string clusterDirectory, IEnumerable<string> clients)
    {
        var directory = Directory(clusterDirectory);
        SafeFiles.EnsurePrivateDirectory(directory);
        var notBefore = DateTimeOffset.UtcNow.AddMinutes(-5);
        var notAfter = notBefore.AddYears(5);
        using var caKey = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var caRequest = new CertificateRequest("CN=membrane local cluster CA", caKey, HashAlgorithmName.SHA256);
        caRequest.CertificateExtensions.Add(new X509BasicConstraintsExtension(true, true, 0, true));
        caRequest.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.KeyCertSign | X509KeyUsageFlags.CrlSign, true));
        using var ca = caRequest.CreateSelfSigned(notBefore, notAfter);
        Write(Ca(clusterDirectory), ca.ExportCertificatePem());
        Issue(ca, clusterDirectory, "etcd", notBefore, notAfter, server: true);
        foreach (var client in clients.Append(CliClient))
        {
            Issue(ca, clusterDirectory, client, notBefore, notAfter, server: false);
        }
    }

    private static void Issue(X509Certificate2 ca, string clusterDirectory, string name, DateTimeOffset notBefore, DateTimeOffset notAfter,
        bool server)
    {
        using var key = ECDsa.Create(ECCurve.NamedCurves.nistP256);
        var request = new CertificateRequest($"CN={name}", key, HashAlgorithmName.SHA256);
        request.CertificateExtensions.Add(new X509BasicConstraintsExtension(false, false, 0, true));
        request.CertificateExtensions.Add(new X509KeyUsageExtension(X509KeyUsageFlags.DigitalSignature, true));
        var usages = new OidCollection { new Oid("1.3.6.1.5.5.7.3.2") }; // client authentication
        if (server)
        {
            usages.Add(new Oid("1.3.6.1.5.5.7.3.1")); // server authentication (the members are each other's peers too)
            var names = new SubjectAlternativeNameBuilder();
            names.AddIpAddress(IPAddress.Loopback);
            names.AddDnsName("localhost");
            request.CertificateExtensions.Add(names.Build());
        }
        request.CertificateExtensions.Add(new X509EnhancedKeyUsageExtension(usages, false));
        var serial = RandomNumberGenerator.GetBytes(16);
        serial[0] &= 0x7f;
        using var certificate = request.Create(ca, notBefore, notAfter, serial);
        Write(Certificate(clusterDirectory, name), certificate.ExportCertificatePem());
        Write(Key(clusterDirectory, name), key.ExportPkcs8PrivateKeyPem());
    }

    private static void Write(string path, string pem)
    {
        using var file = SafeFiles.CreateExclusive(path);
        using var writer = new StreamWriter(file);
        writer.Write(pem);
    }

    /// <summary>An HTTP handler that presents the CLI's certificate and trusts only the cluster's CA.</summary>
    public static SocketsHttpHandler CliHandler(string clusterDirectory)
    {
        var ca = X509Certificate2.CreateFromPem(File.ReadAllText(Ca(clusterDirectory)));
        var client = X509Certificate2.CreateFromPemFile(Certificate(clusterDirectory, CliClient), Key(clusterDirectory, CliClient));
        return new SocketsHttpHandler
        {
            SslOptions = new SslClientAuthenticationOptions
            {
                ClientCertificates = [client],
                RemoteCertificateValidationCallback = (_, certificate, _, errors) =>
                {
                    if (certificate is null || errors.HasFlag(SslPolicyErrors.RemoteCertificateNameMismatch))
                    {
                        return false;
                    }
                    using var chain = new X509Chain();
                    chain.ChainPolicy.TrustMode = X509ChainTrustMode.CustomRootTrust;
                    chain.ChainPolicy.CustomTrustStore.Add(ca);
                    chain.ChainPolicy.RevocationMode = X509RevocationMode.NoCheck;
                    using var presented = new X509Certificate2(certificate);
                    return chain.Build(presented);
                },
            },
        };
    }
}
