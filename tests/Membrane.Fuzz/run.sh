#!/usr/bin/env bash
# Coverage-guided fuzzing of the YAML loader, the API's request parsing, the CNI plugin's stdin and the store-value
# decoders: afl++ drives the SharpFuzz-instrumented
# libraries for SECONDS per target. Any crash (an exception escaping a target) or hang fails the run, and its input
# is kept under $OUT/<target>/default/{crashes,hangs} to become a regression test. Usage: run.sh [SECONDS] [OUT]
set -euo pipefail
cd "$(dirname "$0")"
seconds=${1:-60}
out=${2:-}
keep=1
if [ -z "$out" ]; then
  out=$(mktemp -d /tmp/membrane-fuzz.XXXXXX)
  keep=0 # removed at the end unless something was found
fi
root=$(cd ../.. && pwd)
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
command -v afl-fuzz >/dev/null || { echo "fuzz: afl-fuzz not found (apt-get install afl++)" >&2; exit 1; }
tools="$root/obj/fuzz-tools"
[ -x "$tools/sharpfuzz" ] || dotnet tool install SharpFuzz.CommandLine --version 2.3.0 --tool-path "$tools" >/dev/null
bin="$out/bin"
dotnet publish Membrane.Fuzz.csproj -c Release -o "$bin" -nologo -v quiet
# Instrument what is fuzzed (its own code and the YAML parser under it); the runtime and the rest stay as they are.
for dll in Membrane.Policy.dll YamlDotNet.dll membrane-cni.dll Membrane.Kvstore.dll membrane-agent.dll; do
  "$tools/sharpfuzz" "$bin/$dll" >/dev/null
done
# afl++ on a machine it was not tuned for: no core dumps to wait for, no CPU governor to check, a managed target.
export AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_SKIP_CPUFREQ=1 AFL_SKIP_BIN_CHECK=1 AFL_NO_UI=1 AFL_NO_AFFINITY=1
failed=0
# Two targets at a time, one per core of the CI machine: each still gets SECONDS of its own.
for pair in "yaml api" "cni store"; do
  pids=()
  for target in $pair; do
    afl-fuzz -i "seeds/$target" -o "$out/$target" -t 5000 -m none -V "$seconds" -- dotnet "$bin/Membrane.Fuzz.dll" "$target" \
      >"$out/$target.log" 2>&1 &
    pids+=("$!")
  done
  set -- $pair
  for pid in "${pids[@]}"; do
    target=$1
    shift
    wait "$pid" || { echo "fuzz $target: afl-fuzz failed"; tail -20 "$out/$target.log"; failed=1; continue; }
    stats="$out/$target/default/fuzzer_stats"
    execs=$(awk -F: '/^execs_done/{gsub(/ /,"",$2);print $2}' "$stats")
    paths=$(awk -F: '/^corpus_count/{gsub(/ /,"",$2);print $2}' "$stats")
    crashes=$(find "$out/$target/default/crashes" -type f -name 'id:*' | wc -l)
    hangs=$(find "$out/$target/default/hangs" -type f -name 'id:*' | wc -l)
    echo "fuzz $target: ${seconds}s, $execs executions, $paths inputs in the corpus, $crashes crashes, $hangs hangs"
    if [ "$crashes" -gt 0 ] || [ "$hangs" -gt 0 ]; then
      failed=1
      echo "fuzz $target: inputs kept in $out/$target/default (crashes/ and hangs/)"
    fi
  done
done
if [ "$failed" -eq 0 ] && [ "$keep" -eq 0 ]; then
  rm -rf "$out"
fi
exit "$failed"
