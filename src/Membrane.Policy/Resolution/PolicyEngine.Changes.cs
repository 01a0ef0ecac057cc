using Membrane.Policy.Identity;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;

namespace Membrane.Policy.Resolution;

/// <summary>Changes: namespaces, pods and policies in, out or updated, and which endpoints that makes dirty.</summary>
public sealed partial class PolicyEngine
{
    public void UpsertNamespace(NamespaceManifest ns)
    {
        ArgumentNullException.ThrowIfNull(ns);
        _index.PutNamespace(ns);
        foreach (var endpoint in _index.Endpoints.Where(e => e.Pod.Namespace == ns.Name).ToList())
        {
            UpsertPod(endpoint.Pod);
        }
        Revision++;
    }

    public bool RemoveNamespace(string name)
    {
        if (!_index.RemoveNamespace(name))
        {
            return false;
        }
        foreach (var endpoint in _index.Endpoints.Where(e => e.Pod.Namespace == name).ToList())
        {
            RemovePod(endpoint.Key);
        }
        Revision++;
        return true;
    }

    /// <summary>
    /// Adds or updates a pod; a label change moves it to another identity. A pod given without addresses keeps those
    /// it had (or has none). Returns the endpoint.
    /// </summary>
    public Endpoint UpsertPod(PodManifest pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        return Upsert(pod, pod.Addresses.Count > 0 ? pod.Addresses : _index.Find(pod.Key)?.Addresses ?? []);
    }

    /// <summary>
    /// Adds or updates a pod another node runs (a peer, never resolved here): its addresses are exactly those given,
    /// none included (those its node has published; gone when the node is).
    /// </summary>
    public Endpoint UpsertRemotePod(PodManifest pod)
    {
        ArgumentNullException.ThrowIfNull(pod);
        return Upsert(pod, pod.Addresses);
    }

    private Endpoint Upsert(PodManifest pod, IReadOnlyList<System.Net.IPAddress> addresses)
    {
        var old = _index.Find(pod.Key);
        var labels = Endpoint.DeriveLabels(pod, _index.FindNamespace(pod.Namespace));
        if (old is not null && old.Labels.Equals(labels))
        {
            var same = old with { Pod = pod with { Addresses = addresses }, Addresses = addresses };
            _index.Put(same);
            _tracker.Mark(pod.Key);
            if (!old.Addresses.SequenceEqual(addresses))
            {
                // ipBlock selectors match pods by address.
                _tracker.SelectionsChanged(_cache.Reevaluate(old.Identity));
            }
            _tracker.PortsChanged();
            Revision++;
            return same;
        }
        if (old is not null)
        {
            Detach(old);
        }
        var (identity, created) = _identities.Acquire(labels, IdentityKind.Pod);
        var endpoint = new Endpoint(pod with { Addresses = addresses }, labels, identity, addresses);
        _index.Put(endpoint);
        _tracker.SelectionsChanged(created ? _cache.AddIdentity(identity) : _cache.Reevaluate(identity));
        _tracker.Mark(pod.Key);
        _tracker.PortsChanged();
        Revision++;
        return endpoint;
    }

    public bool RemovePod(string key)
    {
        if (_index.Find(key) is not { } endpoint)
        {
            return false;
        }
        Detach(endpoint);
        _tracker.PortsChanged();
        Revision++;
        return true;
    }

    private void Detach(Endpoint endpoint)
    {
        _index.Remove(endpoint);
        _resolved.Remove(endpoint.Key);
        _tracker.Forget(endpoint.Key);
        _tracker.SelectionsChanged(_identities.Release(endpoint.Identity)
            ? _cache.RemoveIdentity(endpoint.Identity)
            : _cache.Reevaluate(endpoint.Identity));
    }

    public void UpsertPolicy(PolicyDocument document)
    {
        ArgumentNullException.ThrowIfNull(document);
        var changed = new List<string>();
        var selected = _repository.Upsert(document, changed);
        _tracker.SelectionsChanged(changed);
        MarkEndpointsOf(selected);
        Revision++;
    }

    public bool RemovePolicy(string origin)
    {
        var changed = new List<string>();
        if (_repository.Remove(origin, changed) is not { } selected)
        {
            return false;
        }
        _tracker.SelectionsChanged(changed);
        MarkEndpointsOf(selected);
        Revision++;
        return true;
    }

    private void MarkEndpointsOf(IEnumerable<uint> identities)
    {
        foreach (var id in identities)
        {
            _tracker.Mark(_index.Members(id));
        }
    }
}
