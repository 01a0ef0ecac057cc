using System.Net;
using Membrane.Policy.Labels;

namespace Membrane.Policy.Identity;

public enum IdentityKind
{
    Reserved,
    Pod,
    Cidr,
}

/// <summary>A numeric security identity and the labels it stands for.</summary>
public sealed record SecurityIdentity(uint Id, LabelSet Labels, IdentityKind Kind, IPNetwork? Prefix = null)
{
    /// <summary>Outside the cluster: world identities and CIDR identities.</summary>
    public bool IsWorld => Kind == IdentityKind.Cidr
        || Id is ReservedIdentities.World or ReservedIdentities.WorldIPv4 or ReservedIdentities.WorldIPv6;

    public override string ToString() => $"{Id} ({Labels})";
}

/// <summary>Identities with fixed numbers, the same on every node.</summary>
public static class ReservedIdentities
{
    /// <summary>Map keys use 0 for "any peer"; no identity has it.</summary>
    public const uint Any = 0;
    public const uint Host = 1;
    public const uint World = 2;
    public const uint Unmanaged = 3;
    public const uint Health = 4;
    public const uint Init = 5;
    public const uint RemoteNode = 6;
    public const uint KubeApiServer = 7;
    public const uint Ingress = 8;
    public const uint WorldIPv4 = 9;
    public const uint WorldIPv6 = 10;

    public const uint FirstPodIdentity = 256;
    public const uint FirstCidrIdentity = 16_777_217;

    public static IReadOnlyList<SecurityIdentity> All { get; } =
    [
        Make(Host, "host"), Make(World, "world"), Make(Unmanaged, "unmanaged"), Make(Health, "health"),
        Make(Init, "init"), Make(RemoteNode, "remote-node"), Make(KubeApiServer, "kube-apiserver"),
        Make(Ingress, "ingress"), Make(WorldIPv4, "world-ipv4"), Make(WorldIPv6, "world-ipv6"),
    ];

    /// <summary>The identity of an endpoint whose labels are not known yet.</summary>
    public static SecurityIdentity InitIdentity => All[4];

    private static SecurityIdentity Make(uint id, string name) =>
        new(id, new LabelSet([new Label(LabelSource.Reserved, name, "")]), IdentityKind.Reserved);

    /// <summary>Identities an entity stands for; <c>all</c> is the wildcard (handled by the resolver).</summary>
    public static IEnumerable<uint> ForEntity(string entity) => entity switch
    {
        "host" => [Host],
        "remote-node" => [RemoteNode],
        "kube-apiserver" => [KubeApiServer],
        "health" => [Health],
        "init" => [Init],
        "ingress" => [Ingress],
        "unmanaged" => [Unmanaged],
        "world" => [World, WorldIPv4, WorldIPv6],
        "world-ipv4" => [World, WorldIPv4],
        "world-ipv6" => [World, WorldIPv6],
        "cluster" => [Host, RemoteNode, KubeApiServer, Health, Init, Ingress, Unmanaged],
        _ => [],
    };
}
