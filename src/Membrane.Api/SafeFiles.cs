using System.Runtime.InteropServices;

namespace Membrane.Api;

/// <summary>What <c>lstat</c> says of a path (the link itself, never its target).</summary>
public sealed record PathInfo(PathKind Kind, uint Owner, UnixFileMode Mode, long Size);

public enum PathKind
{
    Missing,
    Regular,
    Directory,
    SymbolicLink,
    Other,
}

/// <summary>
/// Files root writes where another user could have prepared the ground: directories must be root's own and not
/// writable by others, writes never follow a link (temporary files are created exclusively), and what is read is a
/// regular file of bounded size (never a FIFO that blocks or a link to <c>/dev/zero</c>). Linux x86-64 (glibc).
/// </summary>
public static partial class SafeFiles
{
    public const UnixFileMode PrivateDirectoryMode = UnixFileMode.UserRead | UnixFileMode.UserWrite | UnixFileMode.UserExecute;

    public const UnixFileMode PrivateFileMode = UnixFileMode.UserRead | UnixFileMode.UserWrite;

    private const uint TypeMask = 0xF000, TypeDirectory = 0x4000, TypeRegular = 0x8000, TypeLink = 0xA000;

    public static PathInfo Inspect(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        // struct stat on x86-64: st_mode at 24, st_uid at 28, st_size at 48 (144 bytes in all).
        var buffer = new byte[144];
        if (LinkStatus(path, buffer) != 0)
        {
            var error = Marshal.GetLastPInvokeError();
            return error == 2 ? new PathInfo(PathKind.Missing, 0, 0, 0)
                : throw new IOException($"cannot inspect {path}: {Marshal.GetPInvokeErrorMessage(error)}");
        }
        var mode = BitConverter.ToUInt32(buffer, 24);
        var kind = (mode & TypeMask) switch
        {
            TypeRegular => PathKind.Regular,
            TypeDirectory => PathKind.Directory,
            TypeLink => PathKind.SymbolicLink,
            _ => PathKind.Other,
        };
        return new PathInfo(kind, BitConverter.ToUInt32(buffer, 28), (UnixFileMode)(mode & 0xFFF), BitConverter.ToInt64(buffer, 48));
    }

    /// <summary>
    /// Creates the directory (0700) or checks the one there: a real directory (not a link), owned by this user, not
    /// writable by group or others; anything else is refused with what to do, and nothing is written into it.
    /// </summary>
    public static void EnsurePrivateDirectory(string path)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Inspect(path).Kind == PathKind.Missing)
        {
            Directory.CreateDirectory(path, PrivateDirectoryMode);
        }
        var info = Inspect(path);
        var me = EffectiveUser();
        if (info.Kind != PathKind.Directory)
        {
            throw new InvalidOperationException($"{path} is {Describe(info.Kind)}, not a directory: remove it (the agent makes its own)");
        }
        if (info.Owner != me)
        {
            throw new InvalidOperationException($"{path} is owned by uid {info.Owner}, not by uid {me} who runs this: another user " +
                $"could replace what is written there; remove it or 'chown {me} {path}'");
        }
        if ((info.Mode & (UnixFileMode.GroupWrite | UnixFileMode.OtherWrite)) != 0)
        {
            throw new InvalidOperationException($"{path} can be written by group or others (mode {Convert.ToString((int)info.Mode, 8)}): " +
                $"'chmod 700 {path}'");
        }
        if (info.Mode != PrivateDirectoryMode)
        {
            File.SetUnixFileMode(path, PrivateDirectoryMode);
        }
    }

    /// <summary>A new file at <paramref name="path"/> (whatever was there, a link included, is removed first, not followed).</summary>
    public static FileStream CreateExclusive(string path, UnixFileMode mode = PrivateFileMode)
    {
        ArgumentNullException.ThrowIfNull(path);
        if (Inspect(path).Kind is PathKind.Regular or PathKind.SymbolicLink or PathKind.Other)
        {
            File.Delete(path);
        }
        // CreateNew is O_CREAT|O_EXCL: it fails on any name that exists, a link planted meanwhile included.
        return new FileStream(path, new FileStreamOptions
        {
            Mode = FileMode.CreateNew,
            Access = FileAccess.Write,
            Share = FileShare.None,
            UnixCreateMode = mode,
        });
    }

    /// <summary>The bytes of a regular file of at most <paramref name="maxBytes"/>; anything else is refused with the reason.</summary>
    public static byte[] ReadRegular(string path, long maxBytes)
    {
        var info = Inspect(path);
        if (info.Kind != PathKind.Regular)
        {
            throw new InvalidDataException($"{path} is {Describe(info.Kind)}, not a regular file");
        }
        if (info.Size > maxBytes)
        {
            throw new InvalidDataException($"{path} holds {info.Size:N0} bytes, more than the {maxBytes:N0} allowed");
        }
        using var stream = new FileStream(path, FileMode.Open, FileAccess.Read, FileShare.Read);
        var buffer = new byte[maxBytes + 1];
        var total = 0;
        int n;
        while (total < buffer.Length && (n = stream.Read(buffer, total, buffer.Length - total)) > 0)
        {
            total += n;
        }
        return total > maxBytes
            ? throw new InvalidDataException($"{path} grew past the {maxBytes:N0} bytes allowed while it was read")
            : buffer[..total];
    }

    private static string Describe(PathKind kind) => kind switch
    {
        PathKind.Missing => "missing",
        PathKind.Regular => "a regular file",
        PathKind.Directory => "a directory",
        PathKind.SymbolicLink => "a symbolic link",
        _ => "a device, FIFO or socket",
    };

    public static uint EffectiveUser() => GetEffectiveUser();

    [LibraryImport("libc", EntryPoint = "lstat", SetLastError = true, StringMarshalling = StringMarshalling.Utf8)]
    private static partial int LinkStatus(string path, [Out] byte[] buffer);

    [LibraryImport("libc", EntryPoint = "geteuid")]
    private static partial uint GetEffectiveUser();
}
