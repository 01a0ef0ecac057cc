using Membrane.Agent.Hosting;

return await AgentCommandLine.RunAsync(args).ConfigureAwait(false);
