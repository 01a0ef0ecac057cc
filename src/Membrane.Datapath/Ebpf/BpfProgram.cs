using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>What the verifier reported for one program.</summary>
public sealed record VerifierStats(string Program, int ProcessedInstructions, int Instructions, int TotalStates, int PeakStates,
    TimeSpan LoadTime);

/// <summary>The result of one BPF_PROG_TEST_RUN: the verdict, the time per run and the packet as the program left it.</summary>
public readonly record struct TestRunResult(uint ReturnValue, uint DurationNs, ReadOnlyMemory<byte> Output);

/// <summary>
/// The skb fields a test run may set (BPF_PROG_TEST_RUN takes these from a <c>struct __sk_buff</c>): the mark, the
/// device the packet came in on (as <c>bpf_fib_lookup</c> sees it), and segmentation offload.
/// </summary>
public readonly record struct TestRunContext(uint Mark = 0, uint IngressIfIndex = 0, uint GsoSize = 0, uint GsoSegments = 0);

/// <summary>A loaded program: its fd, verifier statistics, test runs and tc attachment.</summary>
public sealed unsafe class BpfProgram
{
    public const uint TcActOk = 0;
    public const uint TcActShot = 2;
    public const uint TcActRedirect = 7;

    private readonly OwnedFd _fd;

    internal BpfProgram(string name, OwnedFd fd, VerifierStats stats)
    {
        Name = name;
        _fd = fd;
        Stats = stats;
    }

    public string Name { get; }

    /// <summary>The program's descriptor; throws once the object that loaded it is disposed.</summary>
    public int Fd => _fd.Value;

    public VerifierStats Stats { get; }

    /// <summary>The kernel's id of the loaded program, as bpftool and `bpftool prog show` name it.</summary>
    public uint Id
    {
        get
        {
            // struct bpf_prog_info begins with __u32 type, __u32 id; a zeroed buffer longer than the kernel's struct
            // is accepted, a shorter one is filled as far as it goes.
            var info = stackalloc byte[256];
            new Span<byte>(info, 256).Clear();
            var length = 256u;
            BpfException.Check(LibBpf.ObjectGetInfoByFd(Fd, info, &length), $"info of program {Name}");
            return *(uint*)(info + 4);
        }
    }

    /// <summary>
    /// What the kernel counted of the program's runs where it is attached (struct bpf_prog_info's run_time_ns and
    /// run_cnt): only while run statistics are on (<see cref="RunStatistics.Enable"/>), never for test runs.
    /// </summary>
    public (ulong Nanoseconds, ulong Runs) RunTotals
    {
        get
        {
            // Offsets 192 and 200 of the uapi struct bpf_prog_info (232 bytes on this kernel; the layout only grows).
            var info = stackalloc byte[256];
            new Span<byte>(info, 256).Clear();
            var length = 256u;
            BpfException.Check(LibBpf.ObjectGetInfoByFd(Fd, info, &length), $"info of program {Name}");
            return length < 208 ? (0, 0) : (*(ulong*)(info + 192), *(ulong*)(info + 200));
        }
    }

    /// <summary>Runs the program on one packet (Ethernet frame) in the kernel, <paramref name="repeat"/> times.</summary>
    public TestRunResult TestRun(ReadOnlySpan<byte> packet, int repeat = 1) => TestRun(packet, mark: 0, repeat);

    /// <summary>Runs the program on one packet that carries <paramref name="mark"/> (the skb's mark, as tc sees it).</summary>
    public TestRunResult TestRun(ReadOnlySpan<byte> packet, uint mark, int repeat = 1) => TestRun(packet, new TestRunContext(mark), repeat);

    /// <summary>Runs the program on one packet whose skb carries <paramref name="context"/>.</summary>
    public TestRunResult TestRun(ReadOnlySpan<byte> packet, TestRunContext context, int repeat = 1)
    {
        var output = new byte[Math.Max(packet.Length + 256, 512)];
        // struct __sk_buff by 32-bit words (offsets of linux/bpf.h): mark 8, ingress_ifindex 36, gso_segs 164,
        // gso_size 176. Only as long as needed: up to the mark when that is all, the whole struct (192) otherwise.
        var words = stackalloc uint[48];
        new Span<uint>(words, 48).Clear();
        words[2] = context.Mark;
        words[9] = context.IngressIfIndex;
        words[41] = context.GsoSegments;
        words[44] = context.GsoSize;
        var size = context with { Mark = 0 } == default ? context.Mark == 0 ? 0u : 12u : 192u;
        using var fd = _fd.Borrow();
        fixed (byte* data = packet)
        fixed (byte* outData = output)
        {
            var options = new TestRunOptions
            {
                Size = (nuint)sizeof(TestRunOptions),
                DataIn = data,
                DataSizeIn = (uint)packet.Length,
                DataOut = outData,
                DataSizeOut = (uint)output.Length,
                ContextIn = size == 0 ? null : words,
                ContextSizeIn = size,
                Repeat = repeat,
            };
            BpfException.Check(LibBpf.ProgramTestRun(fd.Fd, &options), $"test run of {Name}");
            return new TestRunResult(options.ReturnValue, options.Duration, output.AsMemory(0, (int)Math.Min(options.DataSizeOut,
                (uint)output.Length)));
        }
    }
}
