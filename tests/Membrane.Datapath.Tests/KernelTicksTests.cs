using Membrane.Datapath.Ebpf;

namespace Membrane.Datapath.Tests;

/// <summary>The tick rate the loader hands the programs, from the kernel config or measured.</summary>
public sealed class KernelTicksTests
{
    [Fact]
    public void TheRateIsReadFromTheConfigLine()
    {
        const string config = """
            # CONFIG_HZ_100 is not set
            CONFIG_HZ_250=y
            CONFIG_HZ=250
            CONFIG_SCHED_HRTICK=y
            """;
        Assert.Equal(250u, KernelTicks.FromConfig(new StringReader(config)));
        Assert.Null(KernelTicks.FromConfig(new StringReader("CONFIG_HZ_250=y\nCONFIG_HZ=\n")));
    }

    [Fact]
    public void MeasuringTheCounterGivesTheConfiguredRate()
    {
        var measured = KernelTicks.Measure(TimeSpan.FromMilliseconds(300));
        Assert.NotNull(measured);
        Assert.Equal(KernelTicks.PerSecond, measured);
    }

    [Fact]
    public void TheCounterAdvances()
    {
        var first = KernelTicks.Now();
        Thread.Sleep(50);
        var second = KernelTicks.Now();
        Assert.NotNull(first);
        Assert.True(second > first, $"{first} then {second}");
    }
}
