namespace Membrane.Datapath.Ebpf;

/// <summary>A libbpf or kernel error, with the errno and, for failed loads, the verifier's log.</summary>
public sealed class BpfException : Exception
{
    public BpfException(string message, int errno = 0, string? verifierLog = null)
        : base(errno == 0 ? message : $"{message}: {Describe(errno)}")
    {
        Errno = errno;
        VerifierLog = verifierLog;
    }

    public int Errno { get; }

    public string? VerifierLog { get; }

    public static string Describe(int errno) => errno switch
    {
        1 => "operation not permitted (EPERM): run as root with CAP_BPF and CAP_NET_ADMIN",
        2 => "no such file or entry (ENOENT)",
        7 => "argument list too long (E2BIG): a map is full",
        13 => "permission denied (EACCES): the verifier rejected the program",
        17 => "already exists (EEXIST)",
        19 => "no such device (ENODEV)",
        22 => "invalid argument (EINVAL)",
        95 => "not supported by this kernel (EOPNOTSUPP)",
        _ => $"errno {errno} ({System.Runtime.InteropServices.Marshal.GetPInvokeErrorMessage(errno)})",
    };

    internal static int Check(int result, string what) => result < 0 ? throw new BpfException(what, -result) : result;
}
