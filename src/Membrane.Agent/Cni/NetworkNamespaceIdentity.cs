using System.Runtime.InteropServices;

namespace Membrane.Agent.Cni;

/// <summary>
/// What a CNI_NETNS path really is: a network namespace (asked of the kernel, NS_GET_NSTYPE), and which one (device
/// and inode of the nsfs file), so the agent's own namespace — the node's — is never taken for a container's.
/// </summary>
internal static partial class NetworkNamespaceIdentity
{
    private const uint NsGetNsType = 0xb703; // _IO(0xb7, 0x3)
    private const int CloneNewNet = 0x40000000;

    /// <summary>Null when the path is a network namespace other than the agent's and init's; else what it is.</summary>
    public static string? Problem(string path)
    {
        var fd = Open(path, 0x80000 /* O_RDONLY | O_CLOEXEC */);
        if (fd < 0)
        {
            return $"cannot be opened ({Marshal.GetPInvokeErrorMessage(Marshal.GetLastPInvokeError())})";
        }
        try
        {
            if (IoControl(fd, NsGetNsType, 0) != CloneNewNet)
            {
                return "is not a network namespace";
            }
        }
        finally
        {
            _ = Close(fd);
        }
        var target = Identity(path);
        return target == Identity("/proc/self/ns/net") ? "is the agent's own network namespace (the node's)"
            : target == Identity("/proc/1/ns/net") ? "is the network namespace of the machine's init (the host's)"
            : null;
    }

    private static (ulong Device, ulong Inode) Identity(string path)
    {
        // struct stat on x86-64: st_dev at 0, st_ino at 8.
        var buffer = new byte[144];
        return Status(path, buffer) == 0 ? (BitConverter.ToUInt64(buffer, 0), BitConverter.ToUInt64(buffer, 8)) : (0, 0);
    }

    [LibraryImport("libc", EntryPoint = "open", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Open(string path, int flags);

    [LibraryImport("libc", EntryPoint = "ioctl", SetLastError = true)]
    private static partial int IoControl(int fd, uint request, nint argument);

    [LibraryImport("libc", EntryPoint = "close")]
    private static partial int Close(int fd);

    [LibraryImport("libc", EntryPoint = "stat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int Status(string path, [Out] byte[] buffer);
}
