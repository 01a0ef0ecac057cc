namespace Membrane.Datapath.Sync;

/// <summary>A change would not fit a map: refused before anything is written, naming the map and the numbers.</summary>
public sealed class MapCapacityException(string message) : Exception(message);
