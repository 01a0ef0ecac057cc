using System.Diagnostics;
using System.Globalization;
using System.IO.Compression;

namespace Membrane.Datapath.Ebpf;

/// <summary>
/// The kernel's tick counter (jiffies) and its rate (CONFIG_HZ). The programs time connections in ticks because
/// reading the counter is a single load; the loader hands them the rate (see <see cref="BpfObject"/>) so loading
/// never depends on the kernel's config file being installed.
/// </summary>
public static class KernelTicks
{
    private static readonly uint[] UsualRates = [100, 250, 300, 1000];
    private static readonly Lazy<uint> Rate = new(Detect);

    /// <summary>CONFIG_HZ of the running kernel: from its config file, or measured when there is none.</summary>
    public static uint PerSecond => Rate.Value;

    /// <summary>The tick counter now (root only: /proc/timer_list), or null when it cannot be read.</summary>
    public static ulong? Now()
    {
        try
        {
            foreach (var line in File.ReadLines("/proc/timer_list"))
            {
                if (line.StartsWith("jiffies: ", StringComparison.Ordinal)
                    && ulong.TryParse(line.AsSpan(9), NumberStyles.None, CultureInfo.InvariantCulture, out var ticks))
                {
                    return ticks;
                }
            }
        }
        catch (Exception e) when (e is IOException or UnauthorizedAccessException)
        {
        }
        return null;
    }

    /// <summary>The CONFIG_HZ line of a kernel config, or null when it has none.</summary>
    public static uint? FromConfig(TextReader config)
    {
        ArgumentNullException.ThrowIfNull(config);
        for (var line = config.ReadLine(); line is not null; line = config.ReadLine())
        {
            if (line.StartsWith("CONFIG_HZ=", StringComparison.Ordinal)
                && uint.TryParse(line.AsSpan(10), NumberStyles.None, CultureInfo.InvariantCulture, out var hz) && hz > 0)
            {
                return hz;
            }
        }
        return null;
    }

    /// <summary>
    /// Measures the rate from the counter over <paramref name="interval"/> and returns the usual rate it is within
    /// 10% of (the measured one otherwise), or null when the counter cannot be read.
    /// </summary>
    public static uint? Measure(TimeSpan interval)
    {
        if (Now() is not { } start)
        {
            return null;
        }
        var from = Stopwatch.GetTimestamp(); // taken right after each read, so a stall elsewhere counts on both sides
        Thread.Sleep(interval);
        if (Now() is not { } end)
        {
            return null;
        }
        var measured = (end - start) / Stopwatch.GetElapsedTime(from).TotalSeconds;
        var nearest = UsualRates.MinBy(r => Math.Abs(measured - r) / r);
        return Math.Abs(measured - nearest) / nearest <= 0.1 ? nearest : (uint)Math.Round(measured);
    }

    private static uint Detect()
    {
        var release = File.ReadAllText("/proc/sys/kernel/osrelease").Trim();
        foreach (var path in new[] { $"/boot/config-{release}", "/proc/config.gz" })
        {
            if (!File.Exists(path))
            {
                continue;
            }
            using var file = File.OpenRead(path);
            using var text = new StreamReader(path.EndsWith(".gz", StringComparison.Ordinal) ? new GZipStream(file,
                CompressionMode.Decompress) : file);
            if (FromConfig(text) is { } hz)
            {
                return hz;
            }
        }
        return Measure(TimeSpan.FromMilliseconds(300))
            ?? throw new BpfException("cannot tell the kernel's tick rate: no kernel config (/boot/config-RELEASE or /proc/config.gz) " +
                "and no /proc/timer_list to measure it");
    }
}
