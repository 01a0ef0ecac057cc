namespace Membrane.Policy.Resolution;

/// <summary>
/// Which endpoints must be resolved again: the dirty set, the selectors each endpoint's last resolution read (a
/// change of their selection makes it dirty), and the endpoints whose egress named ports depend on other pods'
/// ports. Not thread-safe.
/// </summary>
internal sealed class DependencyTracker
{
    private readonly HashSet<string> _dirty = new(StringComparer.Ordinal);
    private readonly Dictionary<string, HashSet<string>> _dependents = new(StringComparer.Ordinal);
    private readonly Dictionary<string, IReadOnlySet<string>> _dependencies = new(StringComparer.Ordinal);
    private readonly HashSet<string> _namedPortUsers = new(StringComparer.Ordinal);

    public IReadOnlyCollection<string> Dirty => _dirty;

    public bool IsDirty(string endpoint) => _dirty.Contains(endpoint);

    public void Mark(string endpoint) => _dirty.Add(endpoint);

    public void Mark(IEnumerable<string> endpoints) => _dirty.UnionWith(endpoints);

    /// <summary>Endpoints whose policy read a selector whose selection changed.</summary>
    public void SelectionsChanged(IEnumerable<string> selectorKeys)
    {
        foreach (var key in selectorKeys)
        {
            if (_dependents.TryGetValue(key, out var endpoints))
            {
                _dirty.UnionWith(endpoints);
            }
        }
    }

    /// <summary>A pod's ports, or the set of pods, changed: egress named ports may resolve differently.</summary>
    public void PortsChanged() => _dirty.UnionWith(_namedPortUsers);

    /// <summary>Forgets an endpoint that is gone.</summary>
    public void Forget(string endpoint)
    {
        _dirty.Remove(endpoint);
        ForgetDependencies(endpoint);
        _namedPortUsers.Remove(endpoint);
    }

    /// <summary>Takes the dirty endpoints that <paramref name="isLocal"/> accepts; the others are dropped from the set.</summary>
    public List<string> Take(Predicate<string> isLocal)
    {
        var taken = _dirty.Where(k => isLocal(k)).ToList();
        _dirty.Clear();
        return taken;
    }

    /// <summary>What a resolution of <paramref name="endpoint"/> read: it is clean until one of them changes.</summary>
    public void Record(string endpoint, IReadOnlySet<string> selectorKeys, bool usesNamedPorts)
    {
        ForgetDependencies(endpoint);
        foreach (var key in selectorKeys)
        {
            if (!_dependents.TryGetValue(key, out var set))
            {
                set = new HashSet<string>(StringComparer.Ordinal);
                _dependents[key] = set;
            }
            set.Add(endpoint);
        }
        _dependencies[endpoint] = selectorKeys;
        if (usesNamedPorts)
        {
            _namedPortUsers.Add(endpoint);
        }
        else
        {
            _namedPortUsers.Remove(endpoint);
        }
        _dirty.Remove(endpoint);
    }

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
