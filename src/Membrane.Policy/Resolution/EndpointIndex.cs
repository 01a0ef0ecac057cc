using System.Net;
using System.Net.Sockets;
using Membrane.Policy.Identity;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>
/// Namespaces and endpoints, indexed by key, by identity and by address, and the address prefixes that policies give
/// CIDR identities: what the datapath's ipcache holds and which identity an address has. Not thread-safe.
/// </summary>
public sealed class EndpointIndex
{
    private readonly Dictionary<string, NamespaceManifest> _namespaces = new(StringComparer.Ordinal);
    private readonly Dictionary<string, Endpoint> _endpoints = new(StringComparer.Ordinal);
    private readonly Dictionary<uint, HashSet<string>> _byIdentity = [];
    private readonly Dictionary<IPAddress, uint> _identityByAddress = [];
    private readonly Dictionary<string, SecurityIdentity> _cidrIdentities = new(StringComparer.Ordinal);

    public IEnumerable<NamespaceManifest> Namespaces => _namespaces.Values;

    public IEnumerable<Endpoint> Endpoints => _endpoints.Values;

    public IEnumerable<string> Keys => _endpoints.Keys;

    /// <summary>Identities that at least one endpoint has.</summary>
    public IEnumerable<uint> EndpointIdentities => _byIdentity.Keys;

    public IEnumerable<SecurityIdentity> CidrIdentities => _cidrIdentities.Values;

    public Endpoint? Find(string key) => _endpoints.GetValueOrDefault(key);

    public NamespaceManifest? FindNamespace(string name) => _namespaces.GetValueOrDefault(name);

    /// <summary>The endpoints of an identity (none when no endpoint has it).</summary>
    public IReadOnlyCollection<string> Members(uint identity) => _byIdentity.GetValueOrDefault(identity) ?? (IReadOnlyCollection<string>)[];

    internal void PutNamespace(NamespaceManifest ns) => _namespaces[ns.Name] = ns;

    internal bool RemoveNamespace(string name) => _namespaces.Remove(name);

    /// <summary>Adds or replaces an endpoint; its addresses and identity are indexed anew.</summary>
    internal void Put(Endpoint endpoint)
    {
        if (_endpoints.TryGetValue(endpoint.Key, out var old))
        {
            Remove(old);
        }
        _endpoints[endpoint.Key] = endpoint;
        foreach (var address in endpoint.Addresses)
        {
            _identityByAddress[address] = endpoint.Identity.Id;
        }
        if (!_byIdentity.TryGetValue(endpoint.Identity.Id, out var members))
        {
            members = new HashSet<string>(StringComparer.Ordinal);
            _byIdentity[endpoint.Identity.Id] = members;
        }
        members.Add(endpoint.Key);
    }

    internal void Remove(Endpoint endpoint)
    {
        _endpoints.Remove(endpoint.Key);
        foreach (var address in endpoint.Addresses)
        {
            _identityByAddress.Remove(address);
        }
        var members = _byIdentity[endpoint.Identity.Id];
        members.Remove(endpoint.Key);
        if (members.Count == 0)
        {
            _byIdentity.Remove(endpoint.Identity.Id);
        }
    }

    internal void PutCidr(SecurityIdentity identity) => _cidrIdentities[identity.Prefix!.Value.ToString()] = identity;

    internal void RemoveCidr(SecurityIdentity identity) => _cidrIdentities.Remove(identity.Prefix!.Value.ToString());

    /// <summary>Address prefix → identity, as the datapath's ipcache holds it.</summary>
    public IEnumerable<(IPNetwork Prefix, uint Identity)> IpCache()
    {
        yield return (IPNetwork.Parse("0.0.0.0/0"), ReservedIdentities.WorldIPv4);
        yield return (IPNetwork.Parse("::/0"), ReservedIdentities.WorldIPv6);
        foreach (var identity in _cidrIdentities.Values)
        {
            yield return (identity.Prefix!.Value, identity.Id);
        }
        foreach (var endpoint in _endpoints.Values)
        {
            foreach (var address in endpoint.Addresses)
            {
                yield return (new IPNetwork(address, address.AddressFamily == AddressFamily.InterNetwork ? 32 : 128), endpoint.Identity.Id);
            }
        }
    }

    /// <summary>
    /// The identity the datapath derives for an address: a pod address (always the longest prefix, and written
    /// last into the ipcache, so it wins over an equal CIDR prefix), else the longest CIDR prefix, else world.
    /// </summary>
    public uint IdentityOf(IPAddress address)
    {
        ArgumentNullException.ThrowIfNull(address);
        if (_identityByAddress.TryGetValue(address, out var pod))
        {
            return pod;
        }
        var best = (Length: -1, Identity: address.AddressFamily == AddressFamily.InterNetwork ? ReservedIdentities.WorldIPv4
            : ReservedIdentities.WorldIPv6);
        foreach (var identity in _cidrIdentities.Values)
        {
            var prefix = identity.Prefix!.Value;
            if (prefix.BaseAddress.AddressFamily == address.AddressFamily && prefix.PrefixLength > best.Length && prefix.Contains(address))
            {
                best = (prefix.PrefixLength, identity.Id);
            }
        }
        return best.Identity;
    }
}
