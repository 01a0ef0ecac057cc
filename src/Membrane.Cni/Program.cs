using Membrane.Cni;

return await CniPlugin.RunAsync(Environment.GetEnvironmentVariable, Console.In, Console.Out).ConfigureAwait(false);
