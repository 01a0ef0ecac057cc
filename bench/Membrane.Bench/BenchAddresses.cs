using System.Net;
using Membrane.Agent.Ipam;
using Membrane.Policy.Workloads;

namespace Membrane.Bench;

/// <summary>Pod addresses for workloads the benchmarks load straight into an engine, from the agent's own IPAM.</summary>
internal static class BenchAddresses
{
    public static ManifestSet Assign(ManifestSet set, IPNetwork? v4 = null, IPNetwork? v6 = null)
    {
        var ipam = new PodAddressAllocator(v4 ?? PodAddressAllocator.DefaultIPv4Range, v6 ?? PodAddressAllocator.DefaultIPv6Range);
        return set with { Pods = set.Pods.Select(p => p.Addresses.Count > 0 ? p : p with { Addresses = ipam.Allocate() }).ToList() };
    }
}
