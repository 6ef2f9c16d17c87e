#!/usr/bin/env bash
# Stops what scripts/up.sh started: cpub-proxy, cpub-control, every function
# container, the PostgreSQL cluster and the Podman API service. Data stays in
# CPUB_HOME (default /var/lib/containerpub) for the next start.
set -euo pipefail
cd "$(dirname "$0")/.."
home=${CPUB_HOME:-/var/lib/containerpub}

stop_pid() { # pidfile name
  [ -f "$1" ] || return 0
  local pid; pid=$(cat "$1")
  if kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    echo "stopped $2"
  fi
  rm -f "$1"
}
stop_pid "$home/run/proxy.pid" cpub-proxy
stop_pid "$home/run/control.pid" cpub-control

status=0
if command -v podman >/dev/null; then
  ids=$(podman ps -aq --filter label=cpub.managed=true)
  if [ -n "$ids" ]; then
    # Podman 4.3 can fail the removal of a container with a user namespace
    # that it did remove ("userdata/shm: device or resource busy",
    # podman#11594): look at what is left and try those once more, and
    # stop the rest of the stack either way.
    if ! podman rm -f -t 0 $ids >/dev/null; then
      echo "down: podman rm reported an error; checking what is left" >&2
      again=$(podman ps -aq --filter label=cpub.managed=true)
      [ -z "$again" ] || podman rm -f -t 0 $again >/dev/null || true
    fi
    echo "removed $(echo "$ids" | wc -l) function container(s)"
  fi
  left=$(podman ps -aq --filter label=cpub.managed=true | wc -l)
  echo "function containers left: $left"
  [ "$left" -eq 0 ] || status=1
fi

if [ -f "$home/run/pg-dir" ]; then
  CPUB_PG_DIR=$(cat "$home/run/pg-dir") bash scripts/pg.sh stop && echo "stopped PostgreSQL"
fi
pkill -f "^podman (--runtime [^ ]+ )?system service --time=0 unix://${CPUB_PODMAN_SOCKET:-/run/podman/podman.sock}\$" 2>/dev/null && echo "stopped the Podman API service" || true
exit $status
