using System.Runtime.CompilerServices;
using System.Runtime.InteropServices;
using System.Text;
using Membrane.Datapath.Interop;

namespace Membrane.Datapath.Ebpf;

/// <summary>
/// Routes libbpf's own messages into a buffer instead of stderr, so a failure can carry them and a success stays
/// quiet. Installed once per process.
/// </summary>
internal static unsafe class LibBpfLog
{
    private static readonly Lock Gate = new();
    private static readonly StringBuilder Buffer = new();
    private static bool _installed;

    public static void Install()
    {
        lock (Gate)
        {
            if (!_installed)
            {
                LibBpf.SetPrint(&Print);
                _installed = true;
            }
        }
    }

    /// <summary>Returns and clears what libbpf printed since the last call.</summary>
    public static string Take()
    {
        lock (Gate)
        {
            var text = Buffer.ToString();
            Buffer.Clear();
            return text;
        }
    }

    [UnmanagedCallersOnly(CallConvs = [typeof(CallConvCdecl)])]
    private static int Print(int level, nint format, nint args)
    {
        const int size = 4096;
        var line = stackalloc byte[size];
        var length = LibBpf.VsnPrintf(line, size, format, args);
        if (length > 0)
        {
            var text = Marshal.PtrToStringUTF8((nint)line, Math.Min(length, size - 1));
            lock (Gate)
            {
                if (Buffer.Length < 1 << 20)
                {
                    Buffer.Append(text);
                }
            }
        }
        return 0;
    }
}
