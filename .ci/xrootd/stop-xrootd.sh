#!/usr/bin/env bash
# Stop the XRootD server that start-xrootd.sh started on XRD_PORT (default 1094),
# from its pid file; the pid is signalled only if it is an xrootd.
set -uo pipefail
PORT=${XRD_PORT:-1094}
D=${XRD_BASE:-/tmp/xrootd}/$PORT
pf=$D/run/xrootd.pid
p=$(cat "$pf" 2>/dev/null) || { echo "stop-xrootd: port $PORT: no pid file"; exit 0; }
if [ -z "$p" ] || [ ! -r /proc/$p/comm ] || [ "$(cat /proc/$p/comm)" != xrootd ]; then
  echo "stop-xrootd: port $PORT: pid $p not running"; rm -f "$pf"; exit 0
fi
kill -TERM "$p"
for _ in $(seq 1 40); do [ -d /proc/$p ] || break; sleep 0.25; done
[ -d /proc/$p ] && kill -KILL "$p"
rm -f "$pf"
echo "stop-xrootd: stopped port $PORT (pid $p)"
