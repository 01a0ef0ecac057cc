#!/usr/bin/env bash
# Sets up the machine, builds Membrane and walks through the ICMP story with the policy engine. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build src/Membrane.Cli -c Release -nologo -v quiet
membrane() { dotnet src/Membrane.Cli/bin/Release/net10.0/membrane.dll "$@"; }
W=examples/workloads/demo.yaml
P=examples/policies

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
verdict() { membrane policy trace --workloads "$W" "$@" -o json | sed -n 's/.*"verdict": "\(ALLOWED\|DENIED\)".*/\1/p' | tail -1; }
show() { printf '  %-48s %s\n' "$1" "$(verdict "${@:2}" || true)"; }

step "Validate the example policies"
membrane policy validate examples
step "A policy with a typo is rejected with the file, object and field"
bad=$(mktemp --suffix=.yaml)
sed 's/type: EchoRequest/type: EchoRequst/' "$P/icmp-echo.yaml" > "$bad"
membrane policy validate "$bad" || true
rm -f "$bad"

step "1. An L4 policy allows only TCP 80 into demo/web: ping is dropped (the original problem)"
show "client -> web TCP 80"        --policies "$P/l4-http-only.yaml" --from demo/client --to demo/web --protocol tcp --port 80
show "client -> web ping"          --policies "$P/l4-http-only.yaml" --from demo/client --to demo/web --protocol icmp --icmp-type 8
show "client -> web ping6"         --policies "$P/l4-http-only.yaml" --from demo/client --to demo/web --protocol icmpv6 --icmp-type 128

step "2. Add an icmps rule: ping and ping6 work again, other ICMP types and ports stay blocked"
both=("$P/l4-http-only.yaml" "$P/icmp-echo.yaml")
show "client -> web ping"          --policies "${both[@]}" --from demo/client --to demo/web --protocol icmp --icmp-type EchoRequest
show "client -> web ping6"         --policies "${both[@]}" --from demo/client --to demo/web --protocol icmpv6 --icmp-type EchoRequest
show "client -> web timestamp (13)" --policies "${both[@]}" --from demo/client --to demo/web --protocol icmp --icmp-type 13
show "client -> web TCP 22"        --policies "${both[@]}" --from demo/client --to demo/web --protocol tcp --port 22
show "intruder (other ns) -> web ping" --policies "${both[@]}" --from other/intruder --to demo/web --protocol icmp --icmp-type 8

step "3. Why? The trace names the policy and rule behind each verdict"
membrane policy trace --policies "${both[@]}" --workloads "$W" --from demo/client --to demo/web --protocol icmp --icmp-type 8 || true
