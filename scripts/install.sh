#!/usr/bin/env bash
# Installs Membrane as root: `membrane` and `membrane-agent` published self-contained for linux-x64 (no .NET needed on
# the machine) into PREFIX/lib/membrane and linked from PREFIX/bin, the CNI plugin compiled ahead of time beside them
# (`membrane cni install` takes it from there), a systemd unit for the agent (Type=notify: ready once its API
# answers), its options file, and bash completion. Every file and directory it creates is listed in
# PREFIX/lib/membrane/installed-files; scripts/uninstall.sh removes exactly those.
#
# usage: scripts/install.sh [--prefix DIR]      (default /usr/local; systemd and bash-completion search its lib and share)
set -euo pipefail
cd "$(dirname "$0")/.."
PREFIX=/usr/local
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "install.sh: --prefix needs a directory" >&2; exit 2; }; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    -h|--help) sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "install.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "install.sh: run as root (the agent loads BPF programs and makes namespaces)" >&2; exit 1; }
PREFIX=$(realpath -m "$PREFIX")
LIB=$PREFIX/lib/membrane
BIN=$PREFIX/bin
UNIT=$PREFIX/lib/systemd/system/membrane-agent.service
CONFIG=$PREFIX/etc/membrane/agent.env
COMPLETION=$PREFIX/share/bash-completion/completions/membrane
MANIFEST=$LIB/installed-files
if [ -e "$MANIFEST" ]; then
  echo "install.sh: Membrane is already installed in $PREFIX; run scripts/uninstall.sh --prefix $PREFIX first" >&2
  exit 1
fi
for path in "$LIB" "$BIN/membrane" "$BIN/membrane-agent" "$UNIT" "$CONFIG" "$COMPLETION"; do
  if [ -e "$path" ] || [ -L "$path" ]; then
    echo "install.sh: $path exists and was not installed by this script; move it away first" >&2
    exit 1
  fi
done

STAGE=$(mktemp -d /tmp/membrane-install.XXXXXX)
trap 'rm -rf "$STAGE"' EXIT
export DOTNET_CLI_TELEMETRY_OPTOUT=1 DOTNET_NOLOGO=1
echo "install: publishing membrane and membrane-agent (self-contained, linux-x64)"
for project in Membrane.Cli Membrane.Agent; do
  dotnet publish "src/$project" -c Release -r linux-x64 --self-contained -o "$STAGE/lib" -nologo -v quiet -p:DebugType=none \
    -p:SatelliteResourceLanguages=en
done
echo "install: compiling the CNI plugin ahead of time"
dotnet publish src/Membrane.Cni -c Release -r linux-x64 -p:PublishAot=true -o "$STAGE/cni" -nologo -v quiet -p:DebugType=none \
  -p:StripSymbols=true
cp "$STAGE/cni/membrane-cni" "$STAGE/lib/membrane-cni"

# Every directory this script makes (deepest last) and every file it writes goes into the manifest, as it happens.
created=()
make_dir() {
  local dir=$1 missing=()
  while [ ! -d "$dir" ]; do missing=("$dir" "${missing[@]}"); dir=$(dirname "$dir"); done
  for dir in "${missing[@]}"; do mkdir "$dir"; created+=("$dir/"); done
}
make_dir "$LIB"
cp -a "$STAGE/lib/." "$LIB/"
(cd "$LIB" && find . -mindepth 1 -type d | sort | sed "s|^\.|$LIB|; s|$|/|") >"$STAGE/dirs"
(cd "$LIB" && find . -type f | sort | sed "s|^\.|$LIB|") >"$STAGE/files"

make_dir "$BIN"
ln -s ../lib/membrane/membrane "$BIN/membrane"
ln -s ../lib/membrane/membrane-agent "$BIN/membrane-agent"

make_dir "$(dirname "$CONFIG")"
cat >"$CONFIG" <<'EOF'
# Options for membrane-agent under systemd (see `membrane agent --help`), e.g.
#   MEMBRANE_AGENT_OPTS="--policy-audit-mode --metrics-address 127.0.0.1:9962"
# Cluster mode: --node NAME --etcd https://HOST:2379 --etcd-ca FILE --etcd-cert FILE --etcd-key FILE --underlay-address CIDR
MEMBRANE_AGENT_OPTS=""
EOF

make_dir "$(dirname "$UNIT")"
cat >"$UNIT" <<EOF
[Unit]
Description=Membrane network-policy agent (eBPF datapath, sandbox pods, API on /var/lib/membrane/membrane.sock)
After=network-online.target
Wants=network-online.target

[Service]
# The agent says READY=1 once its API answers (Microsoft.Extensions.Hosting.Systemd).
Type=notify
EnvironmentFile=-$CONFIG
ExecStart=$BIN/membrane-agent \$MEMBRANE_AGENT_OPTS
# Pinned maps and attached programs outlive the process, so enforcement continues across a restart; the sandbox's pod
# servers are not the agent's to take down with it.
KillMode=process
Restart=on-failure
RestartSec=2
TimeoutStartSec=120
LimitMEMLOCK=infinity

[Install]
WantedBy=multi-user.target
EOF

make_dir "$(dirname "$COMPLETION")"
cat >"$COMPLETION" <<'EOF'
# bash completion for membrane: the CLI completes its own command line (System.CommandLine's suggest directive).
_membrane() {
  local IFS=$'\n' word=${COMP_WORDS[COMP_CWORD]}
  COMPREPLY=($(compgen -W "$(membrane "[suggest:${COMP_POINT}]" "${COMP_LINE}" 2>/dev/null)" -- "$word"))
}
complete -o default -F _membrane membrane
EOF

{
  printf '%s\n' "${created[@]}"
  cat "$STAGE/dirs" "$STAGE/files"
  printf '%s\n' "$BIN/membrane" "$BIN/membrane-agent" "$CONFIG" "$UNIT" "$COMPLETION" "$MANIFEST"
} | sort -u >"$MANIFEST"

echo "install: Membrane $("$BIN/membrane" --version 2>/dev/null || echo) installed in $PREFIX"
echo "  $BIN/membrane, $BIN/membrane-agent -> $LIB ($(du -sh "$LIB" | cut -f1))"
echo "  systemd unit $UNIT (options in $CONFIG): systemctl daemon-reload && systemctl enable --now membrane-agent"
echo "  bash completion $COMPLETION; uninstall with scripts/uninstall.sh --prefix $PREFIX"
