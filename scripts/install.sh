#!/usr/bin/env bash
# `make install` / `make uninstall`: Tidegate as a systemd service on a Debian host.
#
#   scripts/install.sh install|uninstall
#
# Layout (every directory can be overridden from the environment, as make passes them):
#   $LIBDIR   (/usr/local/lib/tidegate)   control/ dataplane/ xdp/ proto/ docs/, a venv/ with the
#                                          Python dependencies (system site packages: Debian's bcc)
#   $BINDIR   (/usr/local/bin)            tidegate: the CLI and `tidegate serve`
#   $UNITDIR  (/etc/systemd/system)       tidegate.service (Type=notify, hitless restarts)
#   $SYSCONFDIR/tidegate (/etc/tidegate)  tidegate.yaml, installed once, never overwritten
#   $STATEDIR (/var/lib/tidegate)         the persisted desired state (0700)
# DESTDIR stages everything under another root (for packaging): nothing is started or reloaded
# then (nor with NO_SYSTEMCTL=1). uninstall keeps the config and the state unless PURGE=1, and leaves whatever data plane
# is attached (detach interfaces first to remove it: `tidegate detach IFNAME`).
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/.." && pwd)
DESTDIR=${DESTDIR:-}
PREFIX=${PREFIX:-/usr/local}
LIBDIR=${LIBDIR:-$PREFIX/lib/tidegate}
BINDIR=${BINDIR:-$PREFIX/bin}
UNITDIR=${UNITDIR:-/etc/systemd/system}
SYSCONFDIR=${SYSCONFDIR:-/etc}
STATEDIR=${STATEDIR:-/var/lib/tidegate}
PYTHON3=${PYTHON3:-/usr/bin/python3}
PURGE=${PURGE:-0}
SOURCES=(control dataplane xdp proto)
UNIT=tidegate.service

log() { printf '[install] %s\n' "$*"; }
die() { printf 'install: %s\n' "$*" >&2; exit 1; }
# NO_SYSTEMCTL=1: never call systemctl (an install into scratch directories, as the tests make)
systemd_running() { [ -z "$DESTDIR" ] && [ "${NO_SYSTEMCTL:-0}" != 1 ] && [ -d /run/systemd/system ]; }

runtime_deps() {  # [project].dependencies of pyproject.toml: what the daemon imports
  "$PYTHON3" -c 'import sys, tomllib; print("\n".join(tomllib.load(open(sys.argv[1], "rb"))["project"]["dependencies"]))' \
    "$ROOT/pyproject.toml"
}

install_sources() {
  local lib=$DESTDIR$LIBDIR
  install -d -m 0755 "$lib" "$lib/docs"
  for dir in "${SOURCES[@]}"; do rm -rf "${lib:?}/$dir"; done
  tar -C "$ROOT" --exclude=__pycache__ --exclude='*.pyc' --exclude=control/rpc/gen -cf - "${SOURCES[@]}" \
    | tar -C "$lib" --no-same-owner -xf -
  install -m 0644 "$ROOT/docs/operations.md" "$lib/docs/operations.md"
}

install_venv() {
  local venv=$DESTDIR$LIBDIR/venv want stamp
  stamp=$venv/.tidegate-deps
  want=$(runtime_deps | sha256sum | cut -c1-16)
  if [ ! -x "$venv/bin/python" ]; then
    log "creating $LIBDIR/venv (system site packages: Debian's python3-bpfcc)"
    "$PYTHON3" -m venv --system-site-packages "$venv"
  fi
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    log "installing the Python dependencies"
    # shellcheck disable=SC2046
    "$venv/bin/python" -m pip install -q --disable-pip-version-check $(runtime_deps)
    echo "$want" > "$stamp"
  fi
  # The gRPC modules, generated now: the service runs with /usr read-only (ProtectSystem=full).
  # -P: the modules of $LIBDIR, never of the current directory (a checkout, say)
  PYTHONPATH=$DESTDIR$LIBDIR "$venv/bin/python" -P -m control.rpc.protogen --force >/dev/null
  local strip=()
  [ -n "$DESTDIR" ] && strip=(-s "$DESTDIR" -p /)  # byte code naming the installed paths
  "$venv/bin/python" -m compileall -q "${strip[@]}" "$DESTDIR$LIBDIR/control" "$DESTDIR$LIBDIR/dataplane"
}

install_wrapper() {
  install -d -m 0755 "$DESTDIR$BINDIR"
  cat > "$DESTDIR$BINDIR/tidegate" <<EOF
#!/bin/sh
# Tidegate CLI and daemon (\`tidegate serve\`), installed by make install from $ROOT.
# -P: never import from the current directory (it may be a checkout of another version)
PYTHONPATH=$LIBDIR\${PYTHONPATH:+:\$PYTHONPATH} exec $LIBDIR/venv/bin/python -P -m control.cli "\$@"
EOF
  chmod 0755 "$DESTDIR$BINDIR/tidegate"
}

install_unit_and_config() {
  install -d -m 0755 "$DESTDIR$UNITDIR" "$DESTDIR$SYSCONFDIR/tidegate"
  install -d -m 0700 "$DESTDIR$STATEDIR"
  sed -e "s|@BINDIR@|$BINDIR|g" -e "s|@LIBDIR@|$LIBDIR|g" -e "s|@SYSCONFDIR@|$SYSCONFDIR|g" \
    "$ROOT/packaging/tidegate.service.in" > "$DESTDIR$UNITDIR/$UNIT"
  chmod 0644 "$DESTDIR$UNITDIR/$UNIT"
  local config=$DESTDIR$SYSCONFDIR/tidegate/tidegate.yaml
  if [ -e "$config" ]; then
    log "$SYSCONFDIR/tidegate/tidegate.yaml exists: kept (the shipped one is $LIBDIR/tidegate.yaml)"
  else
    sed -e "s|/var/lib/tidegate|$STATEDIR|" "$ROOT/packaging/tidegate.yaml" > "$config"
    chmod 0644 "$config"
  fi
  install -m 0644 "$ROOT/packaging/tidegate.yaml" "$DESTDIR$LIBDIR/tidegate.yaml"
}

check_host() {  # what the daemon needs from the host at run time: said, not installed
  [ -n "$DESTDIR" ] && return
  "$DESTDIR$LIBDIR/venv/bin/python" -c 'import bcc' 2>/dev/null \
    || log "WARNING: python3 cannot import bcc: apt-get install python3-bpfcc"
  [ -e "/lib/modules/$(uname -r)/build/include" ] \
    || log "WARNING: no kernel headers for $(uname -r) (BCC compiles against them): apt-get install linux-headers-$(uname -r)"
}

do_install() {
  [ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (or stage with DESTDIR=...)"
  install_sources
  install_venv
  install_wrapper
  install_unit_and_config
  check_host
  if systemd_running; then
    systemctl daemon-reload
    if systemctl is-active --quiet "$UNIT"; then
      log "installed; the running daemon keeps the old code until \`systemctl restart tidegate\` (hitless)"
    else
      log "installed; start it with \`systemctl enable --now tidegate\`"
    fi
  else
    log "installed under ${DESTDIR:-/}: $BINDIR/tidegate, $UNITDIR/$UNIT, $SYSCONFDIR/tidegate/"
  fi
}

do_uninstall() {
  [ -n "$DESTDIR" ] || [ "$(id -u)" = 0 ] || die "run as root (or with DESTDIR=...)"
  if systemd_running && systemctl list-unit-files "$UNIT" >/dev/null 2>&1; then
    systemctl disable --now "$UNIT" >/dev/null 2>&1 || true
  fi
  rm -rf "${DESTDIR}${LIBDIR:?}"
  rm -f "$DESTDIR$BINDIR/tidegate" "$DESTDIR$UNITDIR/$UNIT"
  if [ "$PURGE" = 1 ]; then
    rm -rf "${DESTDIR}${SYSCONFDIR:?}/tidegate" "${DESTDIR}${STATEDIR:?}"
  else
    log "kept $SYSCONFDIR/tidegate/ and $STATEDIR (PURGE=1 removes them)"
  fi
  systemd_running && systemctl daemon-reload
  if [ -z "$DESTDIR" ] && [ -d /sys/fs/bpf/tidegate ]; then
    log "the data plane is still attached on: $(ls /sys/fs/bpf/tidegate | tr '\n' ' ')(detach with" \
        "a daemon running, or remove /sys/fs/bpf/tidegate and the programs by hand)"
  fi
  log "uninstalled"
}

case "${1:-}" in
  install) do_install ;;
  uninstall) do_uninstall ;;
  *) die "usage: $0 install|uninstall" ;;
esac
