using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>What the verifier reported for one program.</summary>
public sealed record VerifierStats(string Program, int ProcessedInstructions, int Instructions, int TotalStates, int PeakStates,
    TimeSpan LoadTime);

/// <summary>The result of one BPF_PROG_TEST_RUN: the verdict, the time per run and the packet as the program left it.</summary>
public readonly record struct TestRunResult(uint ReturnValue, uint DurationNs, ReadOnlyMemory<byte> Output);

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

    /// <summary>Runs the program on one packet (Ethernet frame) in the kernel, <paramref name="repeat"/> times.</summary>
    public TestRunResult TestRun(ReadOnlySpan<byte> packet, int repeat = 1) => TestRun(packet, mark: 0, repeat);

    /// <summary>Runs the program on one packet that carries <paramref name="mark"/> (the skb's mark, as tc sees it).</summary>
    public TestRunResult TestRun(ReadOnlySpan<byte> packet, uint mark, int repeat = 1)
    {
        var output = new byte[Math.Max(packet.Length + 256, 512)];
        // struct __sk_buff up to and including mark (len, pkt_type, mark): the kernel takes a shorter context.
        var context = stackalloc uint[3];
        context[0] = 0;
        context[1] = 0;
        context[2] = mark;
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
                ContextIn = mark == 0 ? null : context,
                ContextSizeIn = mark == 0 ? 0u : 12u,
                Repeat = repeat,
            };
            BpfException.Check(LibBpf.ProgramTestRun(fd.Fd, &options), $"test run of {Name}");
            return new TestRunResult(options.ReturnValue, options.Duration, output.AsMemory(0, (int)Math.Min(options.DataSizeOut,
                (uint)output.Length)));
        }
    }
}
