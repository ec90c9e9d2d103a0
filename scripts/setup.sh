#!/usr/bin/env bash
# Installs everything Tidegate needs on a Debian 12 machine, as root. Safe to run twice:
# every step checks before it acts. Used by `make setup` (and so by `make demo` / `make test`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
VENV=${TIDEGATE_VENV:-$ROOT/.venv}
KREL=$(uname -r)
STAMP=$VENV/.tidegate-deps

log() { printf '[setup] %s\n' "$*"; }

# Debian packages: BCC (not on PyPI), libbpf and libatomic (called through ctypes), kernel headers,
# iproute2 and the traffic/baseline tools;
# prometheus for promtool (the tests lint the live /metrics with it; its server stays off, see
# quiet_prometheus), systemd for systemd-analyze (the tests verify the unit `make install` puts).
APT_PKGS=(python3-bpfcc python3-venv libbpf1 libatomic1 linux-headers-amd64 iproute2 netsniff-ng
          iptables nftables ipset xdp-tools tcpdump make etcd-server etcd-client prometheus systemd bpftool)
NODE_DIR=$ROOT/tests/node  # a Node.js gRPC client of the tests (package.json, package-lock.json)

missing_apt() {
  local p
  for p in "${APT_PKGS[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || echo "$p"
  done
}

# Fleet mode's tests and benchmark start their own etcd members (loopback or namespaces, their
# own ports and data dirs). Installing etcd-server also enables and starts Debian's etcd service
# (127.0.0.1:2379, data in /var/lib/etcd): when this run installed it, stop and disable it again,
# so no stray member keeps running here. An etcd service that was there before is left alone.
quiet_etcd_service() {
  command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ] || return 0
  log "stopping and disabling the etcd service Debian's package started (tests run their own members)"
  systemctl disable --now etcd >/dev/null 2>&1 || true
}

install_apt() {
  local need held=""
  need=$(missing_apt)
  command -v node >/dev/null && command -v npm >/dev/null || need="$need nodejs npm"
  [ -z "$need" ] && { log "Debian packages present"; return; }
  log "installing Debian packages: $(echo $need)"
  export DEBIAN_FRONTEND=noninteractive
  # No service a package brings may start while it installs (prometheus would listen on :9090):
  # invoke-rc.d asks policy-rc.d, and 101 means "not now". One already in place is left alone.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d
    held=yes
  fi
  apt-get update -qq
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $need >/dev/null || { [ -n "$held" ] && rm -f /usr/sbin/policy-rc.d; exit 1; }
  [ -n "$held" ] && rm -f /usr/sbin/policy-rc.d
  case " $(echo $need) " in *" etcd-server "*) quiet_etcd_service ;; esac
  return 0
}

# Only promtool is wanted from the prometheus package: its server is stopped if anything started
# it, and disabled for systemd and for sysvinit, so it neither runs nor starts at boot.
quiet_prometheus() {
  dpkg-query -W -f='${Status}' prometheus 2>/dev/null | grep -q "install ok installed" || return 0
  if [ "$(systemctl is-enabled prometheus.service 2>/dev/null)" != "disabled" ]; then
    if [ -d /run/systemd/system ]; then
      systemctl disable --now prometheus.service >/dev/null 2>&1 || true
    else
      systemctl disable prometheus.service >/dev/null 2>&1 || true
    fi
    update-rc.d prometheus disable >/dev/null 2>&1 || true
    log "prometheus server disabled (only promtool is used)"
  fi
  if pgrep -x prometheus >/dev/null; then
    service prometheus stop >/dev/null 2>&1 || true
  fi
}

# The Node.js client of the tests: its exact dependency tree from package-lock.json.
node_modules() {
  local stamp=$NODE_DIR/node_modules/.tidegate-lock want
  want=$(sha256sum < "$NODE_DIR/package-lock.json" | cut -c1-16)
  [ "$(cat "$stamp" 2>/dev/null)" = "$want" ] && return
  log "installing the Node.js test client's packages (npm ci)"
  npm ci --prefix "$NODE_DIR" --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null
  echo "$want" > "$stamp"
}

# BCC compiles against /lib/modules/$(uname -r)/build. Kernels without their own headers
# (custom or cloud kernels) get Debian's generic headers linked in; networking programs only
# need the stable UAPI/skbuff definitions those carry.
link_headers() {
  local mod=/lib/modules/$KREL
  if [ -e "$mod/build/include" ]; then log "kernel headers present for $KREL"; return; fi
  local arch common
  arch=$(ls -d /usr/src/linux-headers-*-amd64 2>/dev/null | sort -V | tail -n 1)
  common=$(ls -d /usr/src/linux-headers-*-common 2>/dev/null | sort -V | tail -n 1)
  if [ -z "$arch" ] || [ -z "$common" ]; then
    echo "setup: no kernel headers for $KREL and no Debian linux-headers-amd64 fallback" >&2
    exit 1
  fi
  log "no headers for $KREL: falling back to $(basename "$arch")"
  mkdir -p "$mod"
  ln -sfn "$arch" "$mod/build"
  ln -sfn "$common" "$mod/source"
}

mount_bpffs() {
  if ! mount | grep -q ' /sys/fs/bpf type bpf'; then
    mkdir -p /sys/fs/bpf
    mount -t bpf bpf /sys/fs/bpf
    log "mounted bpffs on /sys/fs/bpf"
  fi
}

make_venv() {
  if [ ! -x "$VENV/bin/python" ]; then
    log "creating venv $VENV (system site packages, for Debian's bcc)"
    /usr/bin/python3 -m venv --system-site-packages "$VENV"
  fi
  local want
  want=$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)
  if [ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]; then
    log "installing Python dependencies"
    "$VENV/bin/pip" install -q --upgrade pip >/dev/null
    "$VENV/bin/pip" install -q -e "$ROOT[dev]"
    echo "$want" > "$STAMP"
  fi
  "$VENV/bin/python" -c 'import bcc' || { echo "setup: venv cannot import bcc" >&2; exit 1; }
}

install_apt
quiet_prometheus
link_headers
mount_bpffs
make_venv
node_modules
log "ready"
