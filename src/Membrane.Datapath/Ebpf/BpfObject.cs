using System.Diagnostics;
using System.Globalization;
using System.Runtime.InteropServices;
using System.Text.RegularExpressions;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>How to load an object file.</summary>
public sealed record LoadOptions
{
    /// <summary>bpffs directory for the maps: existing pins are adopted, new maps are pinned there. Null = no pinning.</summary>
    public string? PinDirectory { get; init; }

    /// <summary>Overrides of map sizes by map name.</summary>
    public IReadOnlyDictionary<string, uint> MaxEntries { get; init; } = new Dictionary<string, uint>();
}

/// <summary>
/// A loaded BPF object file: its programs and maps. Loading records the verifier's statistics for every program;
/// a rejected program raises a <see cref="BpfException"/> carrying the verifier log.
/// </summary>
public sealed unsafe partial class BpfObject : IDisposable
{
    private const int LogSize = 16 * 1024 * 1024;
    private readonly SafeBpfObjectHandle _handle;
    private readonly Dictionary<string, BpfProgram> _programs = new(StringComparer.Ordinal);
    private readonly Dictionary<string, BpfMap> _maps = new(StringComparer.Ordinal);

    private BpfObject(nint obj) => _handle = new SafeBpfObjectHandle(obj);

    public IReadOnlyDictionary<string, BpfProgram> Programs => _programs;

    public IReadOnlyDictionary<string, BpfMap> Maps => _maps;

    public BpfProgram Program(string name) =>
        _programs.GetValueOrDefault(name) ?? throw new KeyNotFoundException($"no program {name} in the object");

    public BpfMap Map(string name) =>
        _maps.GetValueOrDefault(name) ?? throw new KeyNotFoundException($"no map {name} in the object");

    /// <summary>A map bound to its key and value types; throws when their sizes are not the map's.</summary>
    public BpfMap<TKey, TValue> Map<TKey, TValue>(string name)
        where TKey : unmanaged
        where TValue : unmanaged => new(Map(name));

    /// <summary>
    /// What the load did to pins an earlier version left: maps of another layout replaced, maps this version no longer
    /// has removed (see <see cref="PinnedMaps"/>). Empty when every pin was adopted as it was.
    /// </summary>
    public IReadOnlyList<string> PinChanges => _pinChanges;

    private readonly List<string> _pinChanges = [];

    /// <summary>The directory holding the compiled objects shipped with this assembly.</summary>
    public static string ObjectDirectory => Path.Combine(AppContext.BaseDirectory, "bpf");

    public static BpfObject Load(string objectFile, LoadOptions? options = null)
    {
        options ??= new LoadOptions();
        if (!File.Exists(objectFile))
        {
            throw new BpfException($"BPF object {objectFile} not found (is the build complete?)");
        }
        LibBpfLog.Install();
        LibBpfLog.Take();
        var obj = Open(objectFile);
        if (obj == 0)
        {
            throw new BpfException($"cannot open {objectFile}: {LibBpfLog.Take().Trim()}", Marshal.GetLastPInvokeError());
        }
        var collection = new BpfObject(obj);
        var logs = new List<(nint Program, nint Buffer)>();
        try
        {
            for (var map = LibBpf.NextMap(obj, 0); map != 0; map = LibBpf.NextMap(obj, map))
            {
                var name = Marshal.PtrToStringUTF8(LibBpf.MapName(map))!;
                if (options.MaxEntries.TryGetValue(name, out var max))
                {
                    BpfException.Check(LibBpf.MapSetMaxEntries(map, max), $"resize of map {name}");
                }
                if (options.PinDirectory is { } dir && File.Exists(Path.Combine(dir, name)))
                {
                    var fd = LibBpf.ObjGet(Path.Combine(dir, name));
                    BpfException.Check(fd, $"open of pinned map {Path.Combine(dir, name)}");
                    if (options.MaxEntries.TryGetValue(name, out var wanted) && PinnedMaps.Of(fd).MaxEntries is var pinned
                        && pinned != wanted)
                    {
                        _ = LibBpf.Close(fd);
                        throw new BpfException($"the pinned map {Path.Combine(dir, name)} holds {pinned:N0} entries and {wanted:N0} were " +
                            $"asked for: a pinned map keeps its size (ask for {pinned:N0}, or remove the pins with 'membrane cleanup' " +
                            "while no pod needs enforcing)");
                    }
                    if (PinnedMaps.Mismatch(map, fd) is { } replacement)
                    {
                        _ = LibBpf.Close(fd);
                        File.Delete(Path.Combine(dir, name)); // pinned anew below, with this version's layout
                        if (!replacement.Lossless)
                        {
                            collection._pinChanges.Add($"replaced the pinned map {name} ({replacement.Reason}): what it held is gone");
                        }
                        continue;
                    }
                    var reused = LibBpf.MapReuseFd(map, fd);
                    _ = LibBpf.Close(fd); // the map holds its own duplicate
                    BpfException.Check(reused, $"adoption of pinned map {name}");
                }
            }
            for (var program = LibBpf.NextProgram(obj, 0); program != 0; program = LibBpf.NextProgram(obj, program))
            {
                // Log level 4 = statistics only: cheap, and carries the processed-instruction count.
                var buffer = (nint)NativeMemory.AllocZeroed(LogSize);
                logs.Add((program, buffer));
                BpfException.Check(LibBpf.ProgramSetLogBuffer(program, (byte*)buffer, LogSize), "setting the verifier log buffer");
                BpfException.Check(LibBpf.ProgramSetLogLevel(program, 4), "setting the verifier log level");
            }
            var watch = Stopwatch.StartNew();
            var result = LibBpf.ObjectLoad(obj);
            watch.Stop();
            if (result < 0)
            {
                var libbpf = LibBpfLog.Take().Trim();
                throw new BpfException($"loading {Path.GetFileName(objectFile)} failed{Environment.NewLine}{libbpf}", -result,
                    FullVerifierLog(objectFile));
            }
            foreach (var (program, buffer) in logs)
            {
                var name = Marshal.PtrToStringUTF8(LibBpf.ProgramName(program))!;
                var log = Marshal.PtrToStringUTF8(buffer) ?? "";
                var stats = ParseStats(name, log, (int)LibBpf.ProgramInstructionCount(program), watch.Elapsed / Math.Max(1, logs.Count));
                collection._programs[name] = new BpfProgram(name, new OwnedFd(collection._handle, LibBpf.ProgramFd(program),
                    $"program {name}"), stats);
            }
            for (var map = LibBpf.NextMap(obj, 0); map != 0; map = LibBpf.NextMap(obj, map))
            {
                var name = Marshal.PtrToStringUTF8(LibBpf.MapName(map))!;
                if (name.Contains('.', StringComparison.Ordinal))
                {
                    continue; // .rodata, .bss and the like
                }
                if (options.PinDirectory is { } dir && !File.Exists(Path.Combine(dir, name)))
                {
                    Directory.CreateDirectory(dir);
                    BpfException.Check(LibBpf.MapPin(map, Path.Combine(dir, name)), $"pinning of map {name} in {dir}");
                }
                collection._maps[name] = new BpfMap(name, new OwnedFd(collection._handle, LibBpf.MapFd(map), $"map {name}"),
                    LibBpf.MapKeySize(map), LibBpf.MapValueSize(map), LibBpf.MapMaxEntries(map));
            }
            if (options.PinDirectory is { } pins)
            {
                foreach (var stale in PinnedMaps.RemoveStale(pins, collection._maps.Keys.ToHashSet(StringComparer.Ordinal)))
                {
                    collection._pinChanges.Add($"removed the pinned map {stale}: this version has no such map");
                }
            }
            LibBpfLog.Take();
            return collection;
        }
        catch
        {
            collection.Dispose();
            throw;
        }
        finally
        {
            foreach (var (_, buffer) in logs)
            {
                NativeMemory.Free((void*)buffer);
            }
        }
    }

    /// <summary>
    /// Opens an object file, handing libbpf the kernel facts the programs may declare as __kconfig externs. libbpf
    /// would otherwise read them from the kernel's config file and refuse to load when it is not installed.
    /// </summary>
    private static nint Open(string objectFile)
    {
        var kconfig = Marshal.StringToCoTaskMemUTF8($"CONFIG_HZ={KernelTicks.PerSecond}\n");
        try
        {
            var options = new ObjectOpenOptions { Size = (nuint)sizeof(ObjectOpenOptions), Kconfig = kconfig };
            return LibBpf.ObjectOpenFile(objectFile, &options); // libbpf keeps its own copy of the string
        }
        finally
        {
            Marshal.FreeCoTaskMem(kconfig);
        }
    }

    /// <summary>Loads the object once more with the verifier's full log (level 1) to show why it was rejected.</summary>
    private static string FullVerifierLog(string objectFile)
    {
        var obj = Open(objectFile);
        if (obj == 0)
        {
            return "";
        }
        var buffers = new List<nint>();
        try
        {
            for (var program = LibBpf.NextProgram(obj, 0); program != 0; program = LibBpf.NextProgram(obj, program))
            {
                var buffer = (nint)NativeMemory.AllocZeroed(LogSize);
                buffers.Add(buffer);
                _ = LibBpf.ProgramSetLogBuffer(program, (byte*)buffer, LogSize);
                _ = LibBpf.ProgramSetLogLevel(program, 1);
            }
            _ = LibBpf.ObjectLoad(obj);
            LibBpfLog.Take();
            return string.Join("\n", buffers.Select(b => Marshal.PtrToStringUTF8(b)).Where(l => !string.IsNullOrEmpty(l)));
        }
        finally
        {
            LibBpf.ObjectClose(obj);
            foreach (var buffer in buffers)
            {
                NativeMemory.Free((void*)buffer);
            }
        }
    }

    [GeneratedRegex(@"processed (\d+) insns .*?total_states (\d+) peak_states (\d+)")]
    private static partial Regex StatsLine();

    private static VerifierStats ParseStats(string program, string log, int instructions, TimeSpan loadTime)
    {
        var match = StatsLine().Match(log);
        int Group(int i) => match.Success ? int.Parse(match.Groups[i].Value, CultureInfo.InvariantCulture) : -1;
        return new VerifierStats(program, Group(1), instructions, Group(2), Group(3), loadTime);
    }

    /// <summary>Closes the object and with it every program and map descriptor (pins stay); later use of them throws.</summary>
    public void Dispose() => _handle.Dispose();
}
