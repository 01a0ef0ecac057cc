#!/usr/bin/env bash
# Sets up the machine, builds Membrane, starts an agent with its own sandbox, and walks through the story:
# ping works; an L4 policy breaks it (the monitor shows the drop); an icmps rule brings it back, and nothing more.
# Real namespaces, real ping/ping6/TCP/UDP. Cleans up after itself. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
dotnet build src/Membrane.Cli -c Release -nologo -v quiet
dotnet build src/Membrane.Agent -c Release -nologo -v quiet # membrane agent runs it
MEMBRANE_DLL=src/Membrane.Cli/bin/Release/net10.0/membrane.dll
membrane() { dotnet "$MEMBRANE_DLL" "$@"; }

PREFIX=mbdemo
PIN=/sys/fs/bpf/mbdemo
STATE=$(mktemp -d /tmp/membrane-demo.XXXXXX)
export MEMBRANE_SOCKET=$STATE/membrane.sock
AGENT=
MONITOR=
UI=
cleanup() {
  [ -n "$MONITOR" ] && kill "$MONITOR" 2>/dev/null || true
  [ -n "$UI" ] && kill "$UI" 2>/dev/null || true
  [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null || true
  membrane cleanup --name-prefix "$PREFIX" --pin-dir "$PIN" --state-dir "$STATE" >/dev/null || true
  echo "demo: cleaned up (namespaces, pod servers, pinned maps, state)"
}
trap cleanup EXIT
membrane cleanup --name-prefix "$PREFIX" --pin-dir "$PIN" >/dev/null 2>&1 || true

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
field() { membrane endpoint get "$1" -o json | sed -n "s/.*\"$2\": \"\\([^\"]*\\)\".*/\\1/p" | head -1; }
ping_from() { # ping_from POD TARGET_POD [-6]
  local ns ip
  ns=$(field "$1" netns); ip=$(field "$2" "$([ "${3:-}" = -6 ] && echo iPv6 || echo iPv4)")
  if ip netns exec "$ns" ping ${3:--4} -c 1 -W 1 "$ip" >/dev/null 2>&1; then echo "  ping${3:+6} $1 -> $2 ($ip): replies"; else echo "  ping${3:+6} $1 -> $2 ($ip): no reply"; fi
}
probe() { membrane connectivity probe --timeout 600 "$@" | sed 's/^/  /' || true; }

step "Start the agent (sandbox prefix $PREFIX, state in $STATE)"
# Background processes are started with dotnet itself (not the function), so $! is the process to stop.
dotnet "$MEMBRANE_DLL" agent --state-dir "$STATE" --name-prefix "$PREFIX" --pin-dir "$PIN" >"$STATE/agent.log" 2>&1 &
AGENT=$!
for _ in $(seq 1 100); do membrane status >/dev/null 2>&1 && break; sleep 0.2; done
membrane status

step "Create pods from ordinary Namespace/Pod YAML (examples/workloads/demo.yaml)"
membrane apply -f examples/workloads/demo.yaml
membrane endpoint list

step "1. No policy: everything is reachable"
ping_from demo/client demo/web
ping_from demo/client demo/web -6
membrane connectivity matrix --protocol icmp

step "2. An L4 policy allows only TCP 80 into demo/web: ping is now dropped"
membrane policy import examples/policies/l4-http-only.yaml
dotnet "$MEMBRANE_DLL" monitor --type drop >"$STATE/monitor.log" 2>/dev/null &
MONITOR=$!
sleep 1
ping_from demo/client demo/web
ping_from demo/client demo/web -6
probe --from demo/client --to demo/web --protocol tcp --port 80
sleep 0.5
echo "  membrane monitor --type drop:"
sed 's/^/    /' "$STATE/monitor.log"

step "3. Add an icmps rule: ping and ping6 work again; other ICMP types and ports stay blocked"
membrane policy import examples/policies/icmp-echo.yaml
ping_from demo/client demo/web
ping_from demo/client demo/web -6
probe --from demo/client --to demo/web --protocol icmp --icmp-type Timestamp
probe --from demo/client --to demo/web --protocol tcp --port 22
probe --from other/intruder --to demo/web --protocol icmp --icmp-type EchoRequest

step "4. Why? membrane policy trace explains each verdict"
membrane policy trace --from demo/client --to demo/web --protocol icmp --icmp-type 8 | sed -n '/^Ingress/,$p' || true
membrane policy trace --from demo/client --to demo/web --protocol icmp --icmp-type 13 | sed -n '/^Ingress/,$p' || true
membrane policy trace --from other/intruder --to demo/web --protocol icmp --icmp-type 8 | sed -n '/^Ingress/,$p' || true

step "5. What the kernel holds for demo/web (membrane bpf policy get demo/web)"
membrane bpf policy get demo/web

step "6. See it: membrane ui (who may reach demo/web, and what was dropped)"
if [ -t 0 ] && [ -t 1 ]; then
  # Interactive: the web view over this sandbox until Enter; then everything is cleaned up as usual.
  dotnet "$MEMBRANE_DLL" ui --listen 127.0.0.1:9971 >"$STATE/ui.log" 2>&1 &
  UI=$!
  for _ in $(seq 50); do grep -q "token=" "$STATE/ui.log" 2>/dev/null && break; sleep 0.1; done
  echo "  open $(sed -n 's/^membrane ui: //p' "$STATE/ui.log") in a browser on this machine (or through ssh -L 9971:127.0.0.1:9971)"
  read -r -p "  press Enter to stop the web view and clean up " _ || true
  kill "$UI" 2>/dev/null || true
else
  echo "  (not a terminal: skipped; run the demo in a terminal to open the web view before the sandbox is removed,"
  echo "   or run 'membrane ui' next to your own agent: docs/ui.md)"
fi
