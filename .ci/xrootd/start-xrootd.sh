#!/usr/bin/env bash
# Start a single local XRootD data server (Debian's xrootd-server), run as root
# with -R daemon. Idempotent: installs the package if missing, starts the
# server only if its pid file names a live xrootd, and checks that the port
# answers. Several servers may run side by side: one per port.
#
#   XRD_PORT=1094           the port (root://localhost:$XRD_PORT//<name>)
#   XRD_DATA=<dir>          the directory served as / (default $XRD_BASE/$XRD_PORT/data)
#   XRD_BASE=/tmp/xrootd    config, admin and pid paths (run/), log (log/): $XRD_BASE/$XRD_PORT/
#
# Pitfall met: with -R daemon, all.adminpath and all.pidpath must be owned by
# daemon, or xrootd dies at start with "permission denied".
set -euo pipefail
PORT=${XRD_PORT:-1094}
BASE=${XRD_BASE:-/tmp/xrootd}
D=$BASE/$PORT
DATA=$(realpath -m "${XRD_DATA:-$D/data}")

die() { echo "start-xrootd: ERROR: $*" >&2; [ -f "$D/log/xrootd.log" ] && tail -n 20 "$D/log/xrootd.log" >&2; exit 1; }
log() { echo "start-xrootd: $*"; }
pid_alive() { local p; p=$(cat "$D/run/xrootd.pid" 2>/dev/null) || return 1
  [ -n "$p" ] && [ -r /proc/$p/comm ] && [ "$(cat /proc/$p/comm)" = xrootd ]; }
port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null; }

[ "$(id -u)" = 0 ] || die "must run as root (it drops to the daemon user)"
if ! command -v xrootd >/dev/null; then
  log "installing xrootd-server"
  mkdir -p "$BASE"
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq xrootd-server; } \
    >"$BASE/apt-install.log" 2>&1 || { tail -n 30 "$BASE/apt-install.log" >&2; die "apt-get install failed"; }
fi

if pid_alive && port_open; then
  [ -z "${XRD_DATA:-}" ] || [ "$(cat "$D/data-dir")" = "$DATA" ] \
    || die "port $PORT already serves $(cat "$D/data-dir"), not $DATA: stop it first (stop-xrootd.sh)"
  log "already running on port $PORT (pid $(cat "$D/run/xrootd.pid")), serving $(cat "$D/data-dir")"
  exit 0
fi
mkdir -p "$D/run" "$D/log" "$DATA"
chown daemon "$D/run" "$D/log"
chmod o+rx "$BASE" "$D"
cat >"$D/xrootd.cfg" <<CFG
all.export /
oss.localroot $DATA
all.adminpath $D/run
all.pidpath $D/run
xrd.port $PORT
CFG
echo "$DATA" >"$D/data-dir"
# -b: in the background; -k 3: keep 3 old logs
xrootd -b -k 3 -c "$D/xrootd.cfg" -l "$D/log/xrootd.log" -R daemon \
  || die "xrootd did not start"
for _ in $(seq 1 40); do port_open && break; sleep 0.25; done
port_open || die "port $PORT does not answer"
for _ in $(seq 1 20); do pid_alive && break; sleep 0.25; done
pid_alive || die "no live xrootd in $D/run/xrootd.pid"
log "running on port $PORT (pid $(cat "$D/run/xrootd.pid")), serving $DATA"
