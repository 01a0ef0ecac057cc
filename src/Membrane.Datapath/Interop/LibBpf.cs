using System.Runtime.InteropServices;

namespace Membrane.Datapath.Interop;

/// <summary>The libbpf 1.x C API, as shipped by Debian's libbpf1. Calls return a negative errno on failure.</summary>
internal static unsafe partial class LibBpf
{
    private const string Library = "libbpf.so.1";

    [LibraryImport(Library, EntryPoint = "bpf_object__open_file", StringMarshalling = StringMarshalling.Utf8)]
    public static partial nint ObjectOpenFile(string path, ObjectOpenOptions* options);

    [LibraryImport(Library, EntryPoint = "bpf_object__load")]
    public static partial int ObjectLoad(nint obj);

    [LibraryImport(Library, EntryPoint = "bpf_object__close")]
    public static partial void ObjectClose(nint obj);

    [LibraryImport(Library, EntryPoint = "bpf_object__next_program")]
    public static partial nint NextProgram(nint obj, nint previous);

    [LibraryImport(Library, EntryPoint = "bpf_object__next_map")]
    public static partial nint NextMap(nint obj, nint previous);

    [LibraryImport(Library, EntryPoint = "bpf_program__name")]
    public static partial nint ProgramName(nint program);

    [LibraryImport(Library, EntryPoint = "bpf_program__fd")]
    public static partial int ProgramFd(nint program);

    /// <summary>Fills the kernel's info struct of a program, map or link fd (struct bpf_prog_info for a program).</summary>
    [LibraryImport(Library, EntryPoint = "bpf_obj_get_info_by_fd")]
    public static partial int ObjectGetInfoByFd(int fd, void* info, uint* infoLength);

    [LibraryImport(Library, EntryPoint = "bpf_program__insn_cnt")]
    public static partial nuint ProgramInstructionCount(nint program);

    [LibraryImport(Library, EntryPoint = "bpf_program__set_log_level")]
    public static partial int ProgramSetLogLevel(nint program, uint level);

    [LibraryImport(Library, EntryPoint = "bpf_program__set_log_buf")]
    public static partial int ProgramSetLogBuffer(nint program, byte* buffer, nuint size);

    [LibraryImport(Library, EntryPoint = "bpf_map__name")]
    public static partial nint MapName(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__fd")]
    public static partial int MapFd(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__reuse_fd")]
    public static partial int MapReuseFd(nint map, int fd);

    [LibraryImport(Library, EntryPoint = "bpf_map__pin", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MapPin(nint map, string path);

    [LibraryImport(Library, EntryPoint = "bpf_map__set_max_entries")]
    public static partial int MapSetMaxEntries(nint map, uint maxEntries);

    [LibraryImport(Library, EntryPoint = "bpf_map__max_entries")]
    public static partial uint MapMaxEntries(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__key_size")]
    public static partial uint MapKeySize(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__value_size")]
    public static partial uint MapValueSize(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__type")]
    public static partial uint MapType(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__map_flags")]
    public static partial uint MapFlags(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_map__inner_map")]
    public static partial nint MapInnerMap(nint map);

    [LibraryImport(Library, EntryPoint = "bpf_obj_get", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int ObjGet(string path);

    [LibraryImport(Library, EntryPoint = "bpf_map_update_elem")]
    public static partial int MapUpdate(int fd, void* key, void* value, ulong flags);

    [LibraryImport(Library, EntryPoint = "bpf_map_lookup_elem")]
    public static partial int MapLookup(int fd, void* key, void* value);

    [LibraryImport(Library, EntryPoint = "bpf_map_delete_elem")]
    public static partial int MapDelete(int fd, void* key);

    [LibraryImport(Library, EntryPoint = "bpf_map_get_next_key")]
    public static partial int MapNextKey(int fd, void* key, void* nextKey);

    [LibraryImport(Library, EntryPoint = "bpf_prog_test_run_opts")]
    public static partial int ProgramTestRun(int fd, TestRunOptions* options);

    [LibraryImport(Library, EntryPoint = "bpf_tc_hook_create")]
    public static partial int TcHookCreate(TcHook* hook);

    [LibraryImport(Library, EntryPoint = "bpf_tc_hook_destroy")]
    public static partial int TcHookDestroy(TcHook* hook);

    [LibraryImport(Library, EntryPoint = "bpf_tc_attach")]
    public static partial int TcAttach(TcHook* hook, TcOptions* options);

    [LibraryImport(Library, EntryPoint = "bpf_tc_detach")]
    public static partial int TcDetach(TcHook* hook, TcOptions* options);

    [LibraryImport(Library, EntryPoint = "bpf_tc_query")]
    public static partial int TcQuery(TcHook* hook, TcOptions* options);

    [LibraryImport(Library, EntryPoint = "bpf_link_create")]
    public static partial int LinkCreate(int programFd, int target, uint attachType, void* options);

    [LibraryImport(Library, EntryPoint = "bpf_link_update")]
    public static partial int LinkUpdate(int linkFd, int newProgramFd, void* options);

    [LibraryImport(Library, EntryPoint = "bpf_link_detach")]
    public static partial int LinkDetach(int linkFd);

    [LibraryImport(Library, EntryPoint = "bpf_obj_pin", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int ObjPin(int fd, string path);

    [LibraryImport(Library, EntryPoint = "bpf_prog_query")]
    public static partial int ProgramQuery(int target, uint attachType, uint queryFlags, uint* attachFlags, uint* programIds,
        uint* programCount);

    [LibraryImport(Library, EntryPoint = "bpf_map_create", StringMarshalling = StringMarshalling.Utf8)]
    public static partial int MapCreate(uint mapType, string name, uint keySize, uint valueSize, uint maxEntries, void* options);

    /// <summary>BPF_ENABLE_STATS: the kernel counts every program's runs and run time while the returned fd is open.</summary>
    [LibraryImport(Library, EntryPoint = "bpf_enable_stats")]
    public static partial int EnableStats(uint type);

    public const uint StatsRunTime = 0; // BPF_STATS_RUN_TIME

    [LibraryImport(Library, EntryPoint = "bpf_map_get_fd_by_id")]
    public static partial int MapGetFdById(uint id);

    public const uint MapTypeLruHash = 9; // BPF_MAP_TYPE_LRU_HASH

    [LibraryImport("libc", EntryPoint = "close")]
    public static partial int Close(int fd);

    [LibraryImport(Library, EntryPoint = "ring_buffer__new")]
    public static partial nint RingBufferNew(int mapFd, delegate* unmanaged[Cdecl]<nint, nint, nuint, int> callback, nint context,
        nint options);

    [LibraryImport(Library, EntryPoint = "ring_buffer__poll")]
    public static partial int RingBufferPoll(nint ringBuffer, int timeoutMs);

    [LibraryImport(Library, EntryPoint = "ring_buffer__free")]
    public static partial void RingBufferFree(nint ringBuffer);

    [LibraryImport(Library, EntryPoint = "libbpf_num_possible_cpus")]
    public static partial int PossibleCpus();

    [LibraryImport(Library, EntryPoint = "libbpf_set_print")]
    public static partial nint SetPrint(delegate* unmanaged[Cdecl]<int, nint, nint, int> callback);

    [LibraryImport("libc", EntryPoint = "vsnprintf")]
    public static partial int VsnPrintf(byte* buffer, nuint size, nint format, nint args);

    public const uint AnyFlag = 0;
    public const uint NoExistFlag = 1;
}

/// <summary>struct bpf_test_run_opts (libbpf 1.1).</summary>
[StructLayout(LayoutKind.Sequential)]
internal unsafe struct TestRunOptions
{
    public nuint Size;
    public void* DataIn;
    public void* DataOut;
    public uint DataSizeIn;
    public uint DataSizeOut;
    public void* ContextIn;
    public void* ContextOut;
    public uint ContextSizeIn;
    public uint ContextSizeOut;
    public uint ReturnValue;
    public int Repeat;
    public uint Duration;
    public uint Flags;
    public uint Cpu;
    public uint BatchSize;
}

/// <summary>struct bpf_tc_hook.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct TcHook
{
    public nuint Size;
    public int IfIndex;
    public int AttachPoint; // BPF_TC_INGRESS = 1, BPF_TC_EGRESS = 2
    public uint Parent;
    private readonly uint _padding;
}

/// <summary>struct bpf_tc_opts.</summary>
[StructLayout(LayoutKind.Sequential)]
internal struct TcOptions
{
    public nuint Size;
    public int ProgramFd;
    public uint Flags;
    public uint ProgramId;
    public uint Handle;
    public uint Priority;
    private readonly uint _padding;
}

/// <summary>
/// The leading fields of libbpf's struct bpf_object_open_opts, up to the one Membrane sets; libbpf accepts a
/// shorter struct than its own as long as <see cref="Size"/> says how long it is.
/// </summary>
[StructLayout(LayoutKind.Sequential)]
internal struct ObjectOpenOptions
{
    public nuint Size;
    public nint ObjectName;
    public byte RelaxedMaps;
    public nint PinRootPath;
    public uint Unused; // a removed field, kept for the layout
    public nint Kconfig; // "CONFIG_X=value" lines that resolve the programs' __kconfig externs
}
