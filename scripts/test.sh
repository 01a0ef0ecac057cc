#!/usr/bin/env bash
# Sets up the machine, builds everything and runs every test (unit, datapath, end-to-end). Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build Membrane.slnx -c Release -nologo -v quiet
# The code style of .editorconfig (whitespace, style, analyzers): a deviation fails the run before any test.
if ! dotnet format Membrane.slnx --verify-no-changes -v quiet; then
  echo "test: 'dotnet format --verify-no-changes' found deviations; run 'dotnet format Membrane.slnx' and commit" >&2
  exit 1
fi
# Lines of C# are at most 140 characters (.editorconfig's max_line_length; dotnet format does not wrap lines).
long=$(find src tests bench -name '*.cs' -not -path '*/obj/*' -not -path '*/bin/*' -exec awk 'length > 140 {print FILENAME ":" FNR ": " length " characters"}' {} +)
if [ -n "$long" ]; then
  echo "$long" >&2
  echo "test: C# lines longer than 140 characters; wrap them" >&2
  exit 1
fi
log=$(mktemp)
set +e
dotnet test Membrane.slnx -c Release --no-build -nologo 2>&1 | tee "$log"
status=${PIPESTATUS[0]}
# Coverage-guided fuzzing (afl++ over SharpFuzz) of the YAML loader, the API's request parsing, the CNI plugin's stdin
# and the store-value decoders, bounded in time;
# a crash or hang fails the run and keeps its input. Its targets count as one test each in the closing line.
fuzz_seconds=${MEMBRANE_FUZZ_SECONDS:-45}
if bash tests/Membrane.Fuzz/run.sh "$fuzz_seconds" 2>&1 | tee -a "$log"; then
  echo "Passed!  - Failed:     0, Passed:     4, Skipped:     0, Total:     4 - fuzzing (${fuzz_seconds}s per target)" | tee -a "$log"
else
  echo "Failed!  - Failed:     4, Passed:     0, Skipped:     0, Total:     4 - fuzzing (${fuzz_seconds}s per target)" | tee -a "$log"
  status=1
fi
set -e
# One plain closing line for CI, summed over the test assemblies.
awk '/(Passed|Failed)! +- Failed: /{gsub(",","");for(i=1;i<=NF;i++){if($i=="Failed:")f+=$(i+1);if($i=="Passed:")p+=$(i+1);if($i=="Skipped:")s+=$(i+1)}}
     END{printf "%d passed, %d failed, %d skipped\n", p, f, s}' "$log"
rm -f "$log"
exit "$status"
