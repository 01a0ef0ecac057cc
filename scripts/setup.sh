#!/usr/bin/env bash
# Installs what Membrane needs to build and test on Debian 12 (run as root). Idempotent.
set -euo pipefail

if ! command -v dotnet >/dev/null 2>&1; then
  echo "setup: the .NET 10 SDK is required (dotnet not found on PATH); nothing was installed" >&2
  exit 1
fi
packages=(clang-14 llvm libbpf-dev bpftool iproute2 iputils-ping nftables tcpdump iperf3 afl++ systemd) # systemd: systemd-analyze checks the installed unit
# Real containers (membrane-cni): podman with its CNI backend, containerd and its CRI, the reference plugins, and
# busybox-static for an image made offline; etcd for the cluster store. Without recommends: podman's would bring
# netavark and crun. openssl makes the certificates of the etcd TLS test. Nothing is started here: the tests start containerd and etcd themselves.
containers=(podman runc catatonit uidmap iptables containernetworking-plugins containerd busybox-static etcd-server etcd-client openssl)
updated=false
install() {
  local missing=() p
  for p in "${@:2}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $updated || { apt-get update -qq; updated=true; }
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $1 "${missing[@]}" >/dev/null
  fi
}
install "" "${packages[@]}"
# The web view: its graph library comes from the npm registry at build time (npm ci), and its test drives Debian's
# headless Chromium through chromedriver. Node.js from Debian only when this machine has no npm at all.
install --no-install-recommends chromium chromium-driver
command -v npm >/dev/null 2>&1 || install --no-install-recommends nodejs npm
install --no-install-recommends "${containers[@]}"
# Prometheus for the metrics test (the test starts its own server): the package must not start a system one, so
# service starts are refused while it installs unless this machine already refuses them.
if ! dpkg -s prometheus >/dev/null 2>&1; then
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  install --no-install-recommends prometheus
fi
# bpffs is not mounted at boot on this machine kind; pinned maps need it.
if ! mountpoint -q /sys/fs/bpf 2>/dev/null; then
  mount -t bpf bpf /sys/fs/bpf 2>/dev/null || echo "setup: warning: could not mount bpffs at /sys/fs/bpf" >&2
fi
