using System.Diagnostics;
using System.Reflection;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Membrane.Datapath.Ebpf;
using Membrane.Datapath.Maps;
using Membrane.Datapath.Sync;

namespace Membrane.Datapath.Tests;

/// <summary>
/// The C# mirrors of the programs' structs and enums, checked against the compiled object's BTF (what the kernel
/// and libbpf see): every C member must have a C# field of the same name at the same offset, with the same total
/// size, and every enum value the same number. Moving, resizing, adding or renaming a C field fails here.
/// </summary>
public sealed partial class BtfLayoutTests
{
    private sealed record Member(string Name, int Offset);

    private sealed record BtfStruct(int Size, List<Member> Members);

    private static readonly Lazy<(Dictionary<string, BtfStruct> Structs, Dictionary<string, Dictionary<string,
        long>> Enums)> Btf = new(Read);

    /// <summary>Structs and enums of membrane.o, from <c>bpftool btf dump file … format raw</c>.</summary>
    private static (Dictionary<string, BtfStruct>, Dictionary<string, Dictionary<string, long>>) Read()
    {
        var psi = new ProcessStartInfo("bpftool", ["btf", "dump", "file", Path.Combine(BpfObject.ObjectDirectory,
            PolicyDatapath.ObjectName), "format", "raw"])
        {
            RedirectStandardOutput = true,
            RedirectStandardError = true,
        };
        using var bpftool = Process.Start(psi)!;
        var text = bpftool.StandardOutput.ReadToEnd();
        bpftool.WaitForExit();
        Assert.True(bpftool.ExitCode == 0, bpftool.StandardError.ReadToEnd());
        var structs = new Dictionary<string, BtfStruct>(StringComparer.Ordinal);
        var enums = new Dictionary<string, Dictionary<string, long>>(StringComparer.Ordinal);
        BtfStruct? currentStruct = null;
        Dictionary<string, long>? currentEnum = null;
        foreach (var line in text.Split('\n'))
        {
            if (Header().Match(line) is { Success: true } header)
            {
                currentStruct = null;
                currentEnum = null;
                var name = header.Groups["name"].Value;
                if (name == "(anon)")
                {
                    continue;
                }
                if (header.Groups["kind"].Value == "STRUCT")
                {
                    currentStruct = new BtfStruct(int.Parse(header.Groups["size"].Value,
                        System.Globalization.CultureInfo.InvariantCulture), []);
                    structs[name] = currentStruct;
                }
                else if (header.Groups["kind"].Value == "ENUM")
                {
                    currentEnum = new Dictionary<string, long>(StringComparer.Ordinal);
                    enums[name] = currentEnum;
                }
            }
            else if (currentStruct is not null && StructMember().Match(line) is { Success: true } member)
            {
                currentStruct.Members.Add(new(member.Groups["name"].Value, int.Parse(member.Groups["bits"].Value,
                    System.Globalization.CultureInfo.InvariantCulture) / 8));
            }
            else if (currentEnum is not null && EnumValue().Match(line) is { Success: true } value)
            {
                currentEnum[value.Groups["name"].Value] = long.Parse(value.Groups["value"].Value,
                    System.Globalization.CultureInfo.InvariantCulture);
            }
        }
        return (structs, enums);
    }

    [GeneratedRegex(@"^\[\d+\] (?<kind>[A-Z_]+) '(?<name>[^']*)'(.* size=(?<size>\d+))?")]
    private static partial Regex Header();

    [GeneratedRegex(@"^\s+'(?<name>[^']+)' type_id=\d+ bits_offset=(?<bits>\d+)")]
    private static partial Regex StructMember();

    [GeneratedRegex(@"^\s+'(?<name>[^']+)' val=(?<value>-?\d+)")]
    private static partial Regex EnumValue();

    /// <summary>C names that the C# mirror spells differently (after dropping underscores and case).</summary>
    private static readonly Dictionary<string, string> Aliases = new(StringComparer.Ordinal)
    {
        ["saddr"] = "source",
        ["daddr"] = "destination",
        ["sport"] = "sourceport",
        ["dport"] = "destinationport",
        ["tsns"] = "timestampns",
        ["len"] = "length",
        ["dir"] = "direction",
        ["proto"] = "protocol",
        ["port"] = "portnetworkorder",
        ["prefixlen"] = "prefixlength",
        ["loaddr"] = "loaddress",
        ["hiaddr"] = "hiaddress",
        ["pad"] = "pad0",
        ["addr"] = "address",
        ["nodemac"] = "nodemac",
    };

    private static string Normalise(string name) => name.Replace("_", "", StringComparison.Ordinal).ToLowerInvariant();

    public static TheoryData<string, Type> Mirrors => new()
    {
        { "policy_key", typeof(PolicyMapKey) }, { "policy_value", typeof(PolicyMapValue) },
        { "ipcache4_key", typeof(IpCache4Key) }, { "ipcache6_key", typeof(IpCache6Key) }, { "ipcache_value", typeof(IpCacheValue) },
        { "ct4_key", typeof(Conntrack4Key) }, { "ct6_key", typeof(Conntrack6Key) }, { "ct_value", typeof(ConntrackValue) },
        { "frag_key", typeof(FragmentKey) }, { "frag_value", typeof(FragmentValue) }, { "counter", typeof(Counter) },
        { "config", typeof(DatapathConfig) },
        { "event", typeof(DatapathEvent) }, { "endpoint_key", typeof(EndpointKey) }, { "endpoint_value", typeof(EndpointValue) },
        { "local_value", typeof(LocalDeliveryValue) }, { "local6_key", typeof(Local6Key) },
    };

    [Theory]
    [MemberData(nameof(Mirrors))]
    public void EveryCSharpMirrorHasTheCStructsLayout(string cName, Type mirror)
    {
        Assert.True(Btf.Value.Structs.TryGetValue(cName, out var c), $"struct {cName} is not in the object's BTF");
        Assert.True(c.Size == Marshal.SizeOf(mirror), $"struct {cName} is {c.Size} bytes, {mirror.Name} {Marshal.SizeOf(mirror)}");
        var fields = mirror.GetFields(BindingFlags.Instance | BindingFlags.Public | BindingFlags.NonPublic)
            .ToDictionary(f => Normalise(f.Name), f => (int)Marshal.OffsetOf(mirror, f.Name));
        foreach (var member in c.Members)
        {
            var name = Normalise(member.Name);
            var expected = fields.ContainsKey(name) ? name : Aliases.GetValueOrDefault(name, name);
            Assert.True(fields.TryGetValue(expected, out var offset),
                $"{cName}.{member.Name} has no field {expected} in {mirror.Name} ({string.Join(", ", fields.Keys)})");
            Assert.True(offset == member.Offset, $"{cName}.{member.Name} is at byte {member.Offset}, {mirror.Name} has it at {offset}");
        }
    }

    [Fact]
    public void EnumsHaveTheCValues()
    {
        var enums = Btf.Value.Enums;
        foreach (var (name, value) in enums["drop_reason"].Where(e => e.Key != "REASON_MAX"))
        {
            var reason = Enum.GetValues<DropReason>().SingleOrDefault(r => Normalise(r.ToString()) == Normalise(name["REASON_".Length..]));
            Assert.True(Enum.IsDefined(reason) && (long)reason == value, $"{name} = {value} has no DropReason of that value");
        }
        Assert.Equal(enums["drop_reason"].Count - 1, Enum.GetValues<DropReason>().Length);
        foreach (var (name, value) in enums["event_type"])
        {
            Assert.Equal(value, (long)Enum.Parse<EventType>(Normalise(name["EVENT_".Length..]), ignoreCase: true));
        }
        foreach (var (name, value) in enums["match_kind"].Where(e => e.Key != "MATCH_NONE"))
        {
            var kind = Enum.GetValues<Policy.Resolution.MatchKind>().Single(k =>
                Normalise(k.ToString()) == Normalise(name["MATCH_".Length..]));
            Assert.Equal(value, PolicyMapSynchronizer.MatchKindCode(kind));
        }
        foreach (var (name, value) in enums["match_kind"])
        {
            Assert.Equal(value, (long)Enum.GetValues<WireMatchKind>().Single(k =>
                Normalise(k.ToString()) == Normalise(name["MATCH_".Length..])));
        }
        Assert.Equal(enums["match_kind"].Count, Enum.GetValues<WireMatchKind>().Length);
        foreach (var (name, value) in enums["traffic_direction"])
        {
            Assert.Equal(value, (long)Enum.Parse<WireDirection>(Normalise(name["DIR_".Length..]), ignoreCase: true));
        }
        Assert.Equal(enums["traffic_direction"].Count, Enum.GetValues<WireDirection>().Length);
        foreach (var (name, value) in enums["trace_reason"])
        {
            Assert.Equal(value, (long)Enum.Parse<TraceReason>(Normalise(name["TRACE_".Length..]), ignoreCase: true));
        }
        Assert.Equal(enums["trace_reason"].Count, Enum.GetValues<TraceReason>().Length);
        foreach (var (name, value) in enums["tunnel_wire"])
        {
            Assert.Equal(value, (long)Enum.Parse<WireTunnel>(Normalise(name["TUNNEL_".Length..]), ignoreCase: true));
        }
        Assert.Equal(enums["tunnel_wire"].Count, Enum.GetValues<WireTunnel>().Length);
    }
}
