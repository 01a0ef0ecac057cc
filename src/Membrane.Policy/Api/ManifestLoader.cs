using System.Net;
using Membrane.Policy.Rules;
using Membrane.Policy.Workloads;
using YamlDotNet.Core;
using YamlDotNet.RepresentationModel;

namespace Membrane.Policy.Api;

/// <summary>The outcome of loading: the manifests when every document is valid, else every error found.</summary>
public sealed record LoadResult(ManifestSet Manifests, IReadOnlyList<PolicyError> Errors)
{
    public bool IsValid => Errors.Count == 0;

    /// <summary>The manifests, or a <see cref="PolicyValidationException"/> carrying every error.</summary>
    public ManifestSet OrThrow() => IsValid ? Manifests : throw new PolicyValidationException(Errors);
}

/// <summary>
/// Loads YAML (or JSON) files and directories holding CNP, CCNP, KNP, Namespace and Pod documents, multi-document
/// files and <c>kind: List</c>. All-or-nothing: any error makes the whole set invalid.
/// </summary>
public static class ManifestLoader
{
    public const string CiliumApiVersion = "cilium.io/v2";
    public const string NetworkingApiVersion = "networking.k8s.io/v1";

    public static LoadResult LoadPaths(IEnumerable<string> paths)
    {
        ArgumentNullException.ThrowIfNull(paths);
        var errors = new List<PolicyError>();
        var builder = new Builder(errors);
        foreach (var path in paths)
        {
            if (!File.Exists(path) && !Directory.Exists(path))
            {
                errors.Add(new PolicyError(path, "", "", "no such file or directory", 0, 0));
            }
        }
        foreach (var file in Files(paths))
        {
            if (new FileInfo(file).Length > YamlLimits.MaxTextLength)
            {
                errors.Add(new PolicyError(file, "", "",
                    $"{new FileInfo(file).Length:N0} bytes is more than the {YamlLimits.MaxTextLength:N0} a file may have", 0, 0));
                continue;
            }
            builder.AddText(File.ReadAllText(file), file);
        }
        return builder.Result();
    }

    /// <summary>The files a set of paths stands for: files as given, directories recursively (*.yaml, *.yml, *.json) in name
    /// order.</summary>
    public static IEnumerable<string> Files(IEnumerable<string> paths) => paths.SelectMany<string, string>(path => Directory.Exists(path)
        ? Directory.EnumerateFiles(path, "*", SearchOption.AllDirectories)
            .Where(f => f.EndsWith(".yaml", StringComparison.Ordinal) || f.EndsWith(".yml", StringComparison.Ordinal)
                || f.EndsWith(".json", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
        : File.Exists(path) ? [path] : []);

    public static LoadResult LoadText(string text, string fileName)
    {
        var builder = new Builder([]);
        builder.AddText(text, fileName);
        return builder.Result();
    }

    private sealed class Builder(List<PolicyError> errors)
    {
        private readonly List<PolicyDocument> _policies = [];
        private readonly List<NamespaceManifest> _namespaces = [];
        private readonly List<PodManifest> _pods = [];
        private readonly Dictionary<string, string> _seen = new(StringComparer.Ordinal);

        public LoadResult Result() =>
            errors.Count == 0 ? new LoadResult(new ManifestSet(_policies, _namespaces, _pods), []) : new LoadResult(ManifestSet.Empty,
                errors);

        public void AddText(string text, string file)
        {
            if (YamlLimits.Check(text, file) is { } tooCostly)
            {
                errors.Add(tooCostly);
                return;
            }
            var stream = new YamlStream();
            try
            {
                stream.Load(new StringReader(text));
            }
            catch (YamlException e)
            {
                errors.Add(new PolicyError(file, "", "",
                    $"malformed YAML at line {e.Start.Line}, column {e.Start.Column}: {e.InnerException?.Message ?? e.Message}",
                    (int)e.Start.Line, (int)e.Start.Column));
                return;
            }
            catch (Exception e) when (e is InvalidOperationException or ArgumentException)
            {
                // YamlDotNet throws these (without a position) on some malformed input: unterminated flow collections,
                // control characters, tags that are not URIs (found by fuzzing; see Corpus/fuzz).
                errors.Add(new PolicyError(file, "", "",
                    $"malformed YAML at line ?: {e.Message} (check for an unclosed '{{' or '[', control characters or a bad tag)", 0, 0));
                return;
            }
            for (var i = 0; i < stream.Documents.Count; i++)
            {
                var root = stream.Documents[i].RootNode;
                if (MapReader.IsNull(root))
                {
                    continue; // an empty document between two '---'
                }
                AddObject(root, file, $"document {i + 1}", "");
            }
        }

        private void AddObject(YamlNode node, string file, string where, string pathPrefix)
        {
            var ctx = new ParseContext(file, errors) { Object = where };
            var map = MapReader.Of(ctx, node, pathPrefix);
            if (map is null)
            {
                return;
            }
            var kind = map.String("kind", required: true);
            var apiVersion = map.String("apiVersion", required: true);
            if (kind is null || apiVersion is null)
            {
                return;
            }
            if (kind == "List")
            {
                map.Ignore("metadata");
                var items = map.Take("items");
                map.Finish();
                if (items is YamlSequenceNode seq)
                {
                    for (var i = 0; i < seq.Children.Count; i++)
                    {
                        AddObject(seq.Children[i], file, $"{where} items[{i}]", "");
                    }
                }
                else if (items is not null)
                {
                    ctx.Error("items", items, $"expected a list, found {MapReader.Describe(items)}");
                }
                return;
            }
            var (expectedApi, namespaced) = kind switch
            {
                "CiliumNetworkPolicy" => (CiliumApiVersion, true),
                "CiliumClusterwideNetworkPolicy" => (CiliumApiVersion, false),
                "NetworkPolicy" => (NetworkingApiVersion, true),
                "Namespace" => ("v1", false),
                "Pod" => ("v1", true),
                _ => ((string?)null, false),
            };
            if (expectedApi is null)
            {
                ctx.Error("kind", node,
                    $"unknown kind \"{kind}\" (expected CiliumNetworkPolicy, CiliumClusterwideNetworkPolicy, NetworkPolicy, Namespace, " +
                    $"Pod or List)");
                return;
            }
            if (apiVersion != expectedApi)
            {
                ctx.Error("apiVersion", node, $"\"{apiVersion}\" is not the apiVersion of {kind} (expected {expectedApi})");
            }
            var meta = Metadata(ctx, map, kind, namespaced);
            if (meta is null)
            {
                map.Ignore("spec", "specs", "status");
                map.Finish();
                return;
            }
            var (name, ns, labels) = meta.Value;
            var origin = new PolicyOrigin(kind, ns, name);
            ctx.Object = origin.ToString();
            if (_seen.TryGetValue(origin.ToString(), out var firstFile))
            {
                ctx.Error("metadata.name", node, $"defined twice (first in {firstFile})");
            }
            _seen[origin.ToString()] = file;

            switch (kind)
            {
                case "CiliumNetworkPolicy" or "CiliumClusterwideNetworkPolicy":
                    Cilium(ctx, map, origin, file, node);
                    break;
                case "NetworkPolicy":
                    map.Ignore("status");
                    var knp = new KubernetesPolicyParser(ctx, origin).Spec(map.Take("spec"), "spec");
                    map.Finish();
                    if (knp is not null)
                    {
                        _policies.Add(new PolicyDocument(origin, file, [knp]) { SourceYaml = Source(ctx, node) });
                    }
                    break;
                case "Namespace":
                    map.Ignore("spec", "status");
                    map.Finish();
                    _namespaces.Add(new NamespaceManifest(name, labels, file) { SourceYaml = Source(ctx, node) });
                    break;
                default:
                    if (PodParser.Pod(ctx, map, ns!, name, labels, file) is { } pod)
                    {
                        _pods.Add(pod with { SourceYaml = Source(ctx, node) });
                    }
                    break;
            }
        }

        private void Cilium(ParseContext ctx, MapReader map, PolicyOrigin origin, string file, YamlNode node)
        {
            map.Ignore("status");
            var parser = new CiliumPolicyParser(ctx, origin);
            var specs = new List<PolicySpec>();
            var errorsBefore = ctx.ErrorCount;
            if (map.Take("spec") is { } spec)
            {
                if (parser.Spec(spec, "spec") is { } s)
                {
                    specs.Add(s);
                }
            }
            if (map.List("specs", parser.Spec) is { } list)
            {
                specs.AddRange(list);
            }
            map.Finish();
            if (!map.Has("spec") && !map.Has("specs") && ctx.ErrorCount == errorsBefore)
            {
                ctx.Error("spec", node, "a policy needs spec or specs");
            }
            if (ctx.ErrorCount == errorsBefore)
            {
                _policies.Add(new PolicyDocument(origin, file, specs) { SourceYaml = Source(ctx, node) });
            }
        }

        /// <summary>The object as the agent stores it; an object over the size limit is an error of its own.</summary>
        private static string Source(ParseContext ctx, YamlNode node)
        {
            var yaml = ToYaml(node);
            if (yaml.Length > YamlLimits.MaxObjectLength)
            {
                ctx.Error("", node, $"the object is {yaml.Length:N0} characters of YAML, more than the {YamlLimits.MaxObjectLength:N0} " +
                    $"one object may have");
            }
            return yaml;
        }

        private static string ToYaml(YamlNode node)
        {
            var writer = new StringWriter();
            new YamlStream(new YamlDocument(node)).Save(writer, assignAnchors: false);
            var text = writer.ToString().TrimEnd();
            return text.EndsWith("...", StringComparison.Ordinal) ? text[..^3].TrimEnd() + "\n" : text + "\n";
        }

        private static (string Name, string? Namespace, IReadOnlyDictionary<string, string> Labels)? Metadata(
            ParseContext ctx, MapReader map, string kind, bool namespaced)
        {
            var meta = MapReader.Of(ctx, map.Take("metadata"), "metadata");
            if (meta is null)
            {
                return null;
            }
            var name = meta.String("name", required: true);
            var ns = meta.String("namespace");
            var labels = meta.StringMap("labels") ?? new Dictionary<string, string>();
            if (meta.StringMap("annotations") is { } annotations
                && annotations.Sum(a => (long)a.Key.Length + a.Value.Length) is var size && size > YamlLimits.MaxAnnotationBytes)
            {
                ctx.Error("metadata.annotations", meta.Node,
                    $"annotations total {size:N0} characters, more than the {YamlLimits.MaxAnnotationBytes:N0} an object may have");
            }
            meta.Ignore("uid", "resourceVersion", "generation", "creationTimestamp", "managedFields",
                "finalizers", "ownerReferences", "generateName", "selfLink", "deletionTimestamp", "deletionGracePeriodSeconds");
            meta.Finish();
            if (name is null)
            {
                return null;
            }
            ctx.Object = namespaced ? $"{kind}/{ns ?? "default"}/{name}" : $"{kind}/{name}";
            var nameError = kind is "Namespace" or "Pod" ? Names.CheckDnsLabel(name) : Names.CheckObjectName(name);
            if (nameError is not null)
            {
                ctx.Error("metadata.name", meta.Node, nameError);
            }
            if (!namespaced && ns is not null)
            {
                ctx.Error("metadata.namespace", meta.Node, $"{kind} is cluster-scoped and takes no namespace");
            }
            if (ns is not null && Names.CheckDnsLabel(ns) is { } nsError)
            {
                ctx.Error("metadata.namespace", meta.Node, nsError);
            }
            foreach (var (key, value) in labels)
            {
                if ((Names.CheckLabelKey(key) ?? Names.CheckLabelValue(value)) is { } labelError)
                {
                    ctx.Error(FieldPath.Child("metadata.labels", key), meta.Node, labelError);
                }
            }
            return (name, namespaced ? ns ?? "default" : null, labels);
        }
    }
}
