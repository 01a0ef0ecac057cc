using Membrane.Policy.Identity;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>Namespaces and pods: endpoints, their identities and addresses.</summary>
public sealed partial class PolicyEngine
{
    // ---- workloads ----

    public void UpsertNamespace(NamespaceManifest ns)
    {
        _namespaces[ns.Name] = ns;
        foreach (var endpoint in _endpoints.Values.Where(e => e.Pod.Namespace == ns.Name).ToList())
        {
            UpsertPod(endpoint.Pod);
        }
        Revision++;
    }

    public bool RemoveNamespace(string name)
    {
        if (!_namespaces.Remove(name))
        {
            return false;
        }
        foreach (var endpoint in _endpoints.Values.Where(e => e.Pod.Namespace == name).ToList())
        {
            RemovePod(endpoint.Key);
        }
        Revision++;
        return true;
    }

    /// <summary>Adds or updates a pod; a label change moves it to another identity. Returns the endpoint.</summary>
    public Endpoint UpsertPod(PodManifest pod)
    {
        var old = _endpoints.GetValueOrDefault(pod.Key);
        var addresses = pod.Addresses.Count > 0 ? pod.Addresses : old?.Addresses ?? _addresses.Allocate();
        foreach (var address in addresses)
        {
            _addresses.Reserve(address);
        }
        var labels = Endpoint.DeriveLabels(pod, _namespaces.GetValueOrDefault(pod.Namespace));
        if (old is not null && old.Labels.Equals(labels))
        {
            var same = old with { Pod = pod with { Addresses = addresses }, Addresses = addresses };
            _endpoints[pod.Key] = same;
            foreach (var address in old.Addresses)
            {
                _identityByAddress.Remove(address);
            }
            foreach (var address in addresses)
            {
                _identityByAddress[address] = old.Identity.Id;
            }
            _dirty.Add(pod.Key);
            if (!old.Addresses.SequenceEqual(addresses))
            {
                foreach (var address in old.Addresses.Except(addresses))
                {
                    _addresses.Release(address);
                }
                // ipBlock selectors match pods by address.
                MarkChanged(_cache.Reevaluate(old.Identity));
            }
            MarkNamedPortDependents();
            Revision++;
            return same;
        }
        if (old is not null)
        {
            DetachEndpoint(old, releaseAddresses: false);
        }
        var (identity, created) = _identities.Acquire(labels, IdentityKind.Pod);
        var endpoint = new Endpoint(pod with { Addresses = addresses }, labels, identity, addresses);
        _endpoints[pod.Key] = endpoint;
        foreach (var address in addresses)
        {
            _identityByAddress[address] = identity.Id;
        }
        if (!_endpointsByIdentity.TryGetValue(identity.Id, out var members))
        {
            members = new HashSet<string>(StringComparer.Ordinal);
            _endpointsByIdentity[identity.Id] = members;
        }
        members.Add(pod.Key);
        MarkChanged(created ? _cache.AddIdentity(identity) : _cache.Reevaluate(identity));
        _dirty.Add(pod.Key);
        MarkNamedPortDependents();
        Revision++;
        return endpoint;
    }

    public bool RemovePod(string key)
    {
        if (!_endpoints.TryGetValue(key, out var endpoint))
        {
            return false;
        }
        DetachEndpoint(endpoint, releaseAddresses: true);
        MarkNamedPortDependents();
        Revision++;
        return true;
    }

    private void DetachEndpoint(Endpoint endpoint, bool releaseAddresses)
    {
        _endpoints.Remove(endpoint.Key);
        _resolved.Remove(endpoint.Key);
        foreach (var address in endpoint.Addresses)
        {
            _identityByAddress.Remove(address);
        }
        _dirty.Remove(endpoint.Key);
        ForgetDependencies(endpoint.Key);
        _namedPortDependents.Remove(endpoint.Key);
        if (releaseAddresses)
        {
            foreach (var address in endpoint.Addresses)
            {
                _addresses.Release(address);
            }
        }
        var members = _endpointsByIdentity[endpoint.Identity.Id];
        members.Remove(endpoint.Key);
        if (members.Count == 0)
        {
            _endpointsByIdentity.Remove(endpoint.Identity.Id);
        }
        if (_identities.Release(endpoint.Identity))
        {
            MarkChanged(_cache.RemoveIdentity(endpoint.Identity));
        }
        else
        {
            MarkChanged(_cache.Reevaluate(endpoint.Identity));
        }
    }

    private void MarkChanged(List<string> changedKeys)
    {
        foreach (var key in changedKeys)
        {
            if (_dependents.TryGetValue(key, out var endpoints))
            {
                _dirty.UnionWith(endpoints);
            }
        }
    }

    private void MarkNamedPortDependents() => _dirty.UnionWith(_namedPortDependents);

    private void ForgetDependencies(string endpoint)
    {
        if (_dependencies.Remove(endpoint, out var keys))
        {
            foreach (var key in keys)
            {
                if (_dependents.TryGetValue(key, out var set))
                {
                    set.Remove(endpoint);
                }
            }
        }
    }
}
