using System.Net;
using System.Net.Sockets;
using Membrane.Agent.Changes;
using Membrane.Agent.Regeneration;
using Membrane.Agent.State;
using Membrane.Policy.Identity;
using Membrane.Policy.Resolution;

namespace Membrane.Agent.Tests.Changes;

/// <summary>A step of the change path where a failure is injected.</summary>
public enum FailAt
{
    Nothing,
    Plan,
    Commit,
    Persist,
    Enforce,
}

/// <summary>
/// The kernel's side without a kernel: endpoints get interface records, each local endpoint's policy is "written" as
/// the text of its map state, the ipcache as its entries. A failing enforce writes half of what it was asked (the
/// endpoints and the first endpoint's policy) before it throws, as a real half-applied change would.
/// </summary>
public sealed class FakeEnforcer : IEnforcer
{
    private readonly Dictionary<string, EndpointRecord> _records = new(StringComparer.Ordinal);
    private int _nextIndex = 100;

    public FailAt Fail { get; set; }

    public IReadOnlyDictionary<string, EndpointRecord> Records => _records;

    public Dictionary<string, string> PolicyMaps { get; } = new(StringComparer.Ordinal);

    public List<string> IpCache { get; private set; } = [];

    public RegenerationPlan Plan(DesiredState state)
    {
        if (Take(FailAt.Plan))
        {
            throw new AgentInputException("the policy map is full (injected); nothing was changed");
        }
        var remoteNodes = state.RemoteNodes.Select(a => (new IPNetwork(a, a.AddressFamily == AddressFamily.InterNetwork ? 32 : 128),
            ReservedIdentities.RemoteNode));
        return new RegenerationPlan(state.Engine.ResolveDirty(), Regenerator.OnePerPrefix(state.Engine.IpCache().Concat(remoteNodes)));
    }

    public bool Enforce(DesiredState state, RegenerationPlan plan, bool attachAll)
    {
        var local = state.LocalEndpoints.ToDictionary(e => e.Key, StringComparer.Ordinal);
        var created = false;
        foreach (var key in _records.Keys.Where(k => !local.ContainsKey(k)).ToList())
        {
            _records.Remove(key);
            PolicyMaps.Remove(key);
        }
        foreach (var (key, endpoint) in local.Where(l => !_records.ContainsKey(l.Key)))
        {
            _records[key] = new EndpointRecord(key, $"/run/netns/{key.Replace('/', '-')}", $"lxc{_nextIndex}", _nextIndex++,
                endpoint.Addresses.Select(a => a.ToString()).ToList());
            created = true;
        }
        var failing = Take(FailAt.Enforce);
        foreach (var policy in plan.Dirty.Where(p => local.ContainsKey(p.Endpoint.Key)))
        {
            PolicyMaps[policy.Endpoint.Key] = Text(policy.State);
            if (failing)
            {
                break;
            }
        }
        if (failing)
        {
            throw new InvalidOperationException("the kernel refused a map write (injected)");
        }
        IpCache = plan.IpCache.Select(e => $"{e.Prefix}={e.Identity}").Order(StringComparer.Ordinal).ToList();
        return created;
    }

    /// <summary>
    /// What the kernel holds, as text, to compare before and after a change. Interface indexes are left out: an
    /// endpoint a failed change removed is made again by the rollback, with a new interface (as on a real node).
    /// </summary>
    public string Kernel() => string.Join("\n", _records.Values.OrderBy(r => r.Key, StringComparer.Ordinal)
            .Select(r => $"{r.Key} {string.Join(",", r.Addresses)}"))
        + "\n" + string.Join("\n", PolicyMaps.OrderBy(p => p.Key, StringComparer.Ordinal).Select(p => $"{p.Key}: {p.Value}"))
        + "\n" + string.Join(" ", IpCache);

    private static string Text(MapState state) => string.Join(";", state.Entries.Select(e => $"{e.Key}={e.Value.Verdict}")
        .Order(StringComparer.Ordinal));

    private bool Take(FailAt step)
    {
        if (Fail != step)
        {
            return false;
        }
        Fail = FailAt.Nothing;
        return true;
    }
}

/// <summary>The real state file, whose next write can be made to fail.</summary>
public sealed class FailingStateFile(StateStore file) : IStateFile
{
    public bool FailNext { get; set; }

    public string FilePath => file.FilePath;

    public void Save(PersistedState state)
    {
        if (FailNext)
        {
            FailNext = false;
            throw new IOException("No space left on device (injected)");
        }
        file.Save(state);
    }

    /// <summary>The file's bytes, or nothing before the first write.</summary>
    public string Content() => File.Exists(FilePath) ? File.ReadAllText(FilePath) : "";
}

/// <summary>The real local object store, whose next commit can be made to fail.</summary>
public sealed class FailingObjectStore : IObjectStore
{
    private readonly LocalObjectStore _store = new();

    public bool FailNext { get; set; }

    public long Revision => _store.Revision;

    public IReadOnlyDictionary<string, string> Objects => _store.Objects;

    public string Put(string key, string yaml) => _store.Put(key, yaml);

    public bool Remove(string key) => _store.Remove(key);

    public void Clear() => _store.Clear();

    public long Commit()
    {
        if (FailNext)
        {
            FailNext = false;
            throw new InvalidOperationException("the store refused the commit (injected)");
        }
        return _store.Commit();
    }

    public ObjectStoreSnapshot Snapshot() => _store.Snapshot();

    public void Restore(ObjectStoreSnapshot snapshot) => _store.Restore(snapshot);
}
