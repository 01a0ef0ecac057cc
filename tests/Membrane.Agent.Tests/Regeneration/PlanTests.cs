using System.Net;
using System.Reflection;
using Membrane.Agent.Regeneration;
using Microsoft.Extensions.Logging;

namespace Membrane.Agent.Tests.Regeneration;

/// <summary>The ipcache a plan writes holds each prefix once, with the precedence the engine's trace uses.</summary>
public sealed class PlanTests
{
    [Fact]
    public void APrefixGivenTwiceIsWrittenOnceAndTheLaterSourceWins()
    {
        var world = IPNetwork.Parse("0.0.0.0/0");
        var pod = IPNetwork.Parse("10.0.0.5/32");
        var plan = Regenerator.OnePerPrefix([(world, 2), (IPNetwork.Parse("::/0"), 9), (world, 16_777_217), (pod, 300), (pod, 1)]);
        Assert.Equal([(world, 16_777_217u), (IPNetwork.Parse("::/0"), 9u), (pod, 1u)], plan);
    }

    [Fact]
    public void EveryLogMessageOfTheAgentHasAnEventIdOfItsOwn()
    {
        var ids = typeof(Regenerator).Assembly.GetTypes()
            .SelectMany(t => t.GetMethods(BindingFlags.Static | BindingFlags.Public | BindingFlags.NonPublic | BindingFlags.DeclaredOnly))
            .Select(m => (Method: $"{m.DeclaringType!.Name}.{m.Name}", Attribute: m.GetCustomAttribute<LoggerMessageAttribute>()))
            .Where(m => m.Attribute is not null)
            .GroupBy(m => m.Attribute!.EventId)
            .Where(g => g.Count() > 1)
            .Select(g => $"{g.Key}: {string.Join(", ", g.Select(m => m.Method))}")
            .ToList();
        Assert.True(ids.Count == 0, $"EventIds used twice: {string.Join("; ", ids)}");
    }
}
