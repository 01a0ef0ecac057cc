using Membrane.Agent.Sandbox;
using Membrane.Agent.State;
using Membrane.Api;

namespace Membrane.Agent.Tests.State;

/// <summary>
/// The ground another local user could prepare before root writes (issue 24): a state or queue directory they own or
/// may write, links planted where temporary files go, FIFOs and links to devices where files are read.
/// </summary>
public sealed class SafeFilesTests : IDisposable
{
    private readonly string _root = Path.Combine(Path.GetTempPath(), $"mbsafe-{Guid.NewGuid():N}");

    public SafeFilesTests() => Directory.CreateDirectory(_root);

    private string PathOf(string name) => Path.Combine(_root, name);

    [Fact]
    public void ADirectoryAnotherUserOwnsOrMayWriteOrThatIsALinkIsRefusedUntouched()
    {
        var owned = PathOf("owned");
        Directory.CreateDirectory(owned);
        File.SetUnixFileMode(owned, SafeFiles.PrivateDirectoryMode);
        Chown(owned, 65534);
        var error = Assert.Throws<InvalidOperationException>(() => SafeFiles.EnsurePrivateDirectory(owned));
        Assert.Contains("owned by uid 65534", error.Message, StringComparison.Ordinal);

        var open = PathOf("open");
        Directory.CreateDirectory(open);
        File.SetUnixFileMode(open, (UnixFileMode)0x1FF); // 0777
        error = Assert.Throws<InvalidOperationException>(() => SafeFiles.EnsurePrivateDirectory(open));
        Assert.Contains("written by group or others", error.Message, StringComparison.Ordinal);
        Assert.Equal((UnixFileMode)0x1FF, File.GetUnixFileMode(open)); // refused, not silently changed

        var link = PathOf("link");
        Directory.CreateSymbolicLink(link, open);
        error = Assert.Throws<InvalidOperationException>(() => SafeFiles.EnsurePrivateDirectory(link));
        Assert.Contains("symbolic link", error.Message, StringComparison.Ordinal);

        var mine = PathOf("mine");
        SafeFiles.EnsurePrivateDirectory(mine);
        Assert.Equal(SafeFiles.PrivateDirectoryMode, File.GetUnixFileMode(mine));
    }

    [Fact]
    public void TheStateFileIsNeverWrittenThroughALinkPlantedBesideIt()
    {
        var state = PathOf("state");
        var victim = PathOf("victim");
        File.WriteAllText(victim, "root's file");
        var store = new StateStore(state);
        store.Save(new PersistedState());
        File.CreateSymbolicLink(store.FilePath + ".tmp", victim);
        File.CreateSymbolicLink(store.BackupPath + ".tmp", victim);

        store.Save(new PersistedState { Revision = 7 });

        Assert.Equal("root's file", File.ReadAllText(victim));
        Assert.Equal(PathKind.Regular, SafeFiles.Inspect(store.FilePath).Kind);
        Assert.Equal(PathKind.Regular, SafeFiles.Inspect(store.BackupPath).Kind);
        Assert.Equal(7, store.Load(0).Revision);
    }

    [Fact]
    public void OnlyARegularFileOfBoundedSizeIsRead()
    {
        var fifo = PathOf("fifo.json");
        Ip.Exec("mkfifo", [fifo], null);
        var zero = PathOf("zero.json");
        File.CreateSymbolicLink(zero, "/dev/zero");
        var big = PathOf("big.json");
        File.WriteAllBytes(big, new byte[100_000]);
        var fine = PathOf("fine.json");
        File.WriteAllText(fine, "{}");

        Assert.Contains("FIFO", Assert.Throws<InvalidDataException>(() => SafeFiles.ReadRegular(fifo, 65536)).Message,
            StringComparison.Ordinal);
        Assert.Contains("symbolic link", Assert.Throws<InvalidDataException>(() => SafeFiles.ReadRegular(zero, 65536)).Message,
            StringComparison.Ordinal);
        Assert.Contains("more than", Assert.Throws<InvalidDataException>(() => SafeFiles.ReadRegular(big, 65536)).Message,
            StringComparison.Ordinal);
        Assert.Equal("{}"u8.ToArray(), SafeFiles.ReadRegular(fine, 65536));
    }

    private static void Chown(string path, int uid) => Ip.Exec("chown", [$"{uid}", path], null);

    public void Dispose() => Directory.Delete(_root, recursive: true);
}
