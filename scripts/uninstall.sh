#!/usr/bin/env bash
# Removes what scripts/install.sh installed in PREFIX, exactly the files and directories listed in
# PREFIX/lib/membrane/installed-files (a directory only when it is empty). Stop the agent first; the sandbox's
# namespaces and pinned maps are the agent's state, removed with `membrane cleanup` before uninstalling.
#
# usage: scripts/uninstall.sh [--prefix DIR]    (default /usr/local)
set -euo pipefail
PREFIX=/usr/local
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) [ $# -ge 2 ] || { echo "uninstall.sh: --prefix needs a directory" >&2; exit 2; }; PREFIX=$2; shift 2 ;;
    --prefix=*) PREFIX=${1#*=}; shift ;;
    -h|--help) sed -n '2,6p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "uninstall.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done
[ "$(id -u)" = 0 ] || { echo "uninstall.sh: run as root" >&2; exit 1; }
PREFIX=$(realpath -m "$PREFIX")
LIB=$PREFIX/lib/membrane
MANIFEST=$LIB/installed-files
[ -f "$MANIFEST" ] || { echo "uninstall.sh: no Membrane installation in $PREFIX ($MANIFEST is missing)" >&2; exit 1; }
for pid in $(pgrep -x membrane-agent || true); do
  if [ "$(readlink -f "/proc/$pid/exe" 2>/dev/null)" = "$LIB/membrane-agent" ]; then
    echo "uninstall.sh: the agent installed here is running (pid $pid); stop it first (systemctl stop membrane-agent)" >&2
    exit 1
  fi
done
if [ -d /run/systemd/system ] && systemctl is-enabled membrane-agent >/dev/null 2>&1; then
  systemctl disable membrane-agent >/dev/null 2>&1 || true
fi
mapfile -t listed <"$MANIFEST"
files=0 dirs=0 kept=()
for path in "${listed[@]}"; do
  case "$path" in
    "$PREFIX"/*|*/) ;; # directories (the prefix's own parents too, when install made them) go only when empty
    *) echo "uninstall.sh: $MANIFEST lists $path, outside $PREFIX: not touched" >&2; continue ;;
  esac
  if [ "${path%/}" = "$path" ] && { [ -e "$path" ] || [ -L "$path" ]; }; then rm -f "$path"; files=$((files + 1)); fi
done
while IFS= read -r path; do
  dir=${path%/}
  [ -d "$dir" ] || continue
  if rmdir "$dir" 2>/dev/null; then dirs=$((dirs + 1)); else kept+=("$dir"); fi
done < <(printf '%s\n' "${listed[@]}" | grep '/$' | sort -r)
[ -d /run/systemd/system ] && systemctl daemon-reload >/dev/null 2>&1 || true
echo "uninstall: removed $files files and $dirs directories from $PREFIX"
for dir in "${kept[@]}"; do echo "  kept $dir: it holds files Membrane did not install"; done
