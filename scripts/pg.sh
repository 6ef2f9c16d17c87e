#!/usr/bin/env bash
# Starts (or reuses) ContainerPub's local PostgreSQL cluster in a data
# directory and prints its URL. Usage: scripts/pg.sh start|stop|url
#   CPUB_PG_DIR   data directory (default /var/tmp/containerpub-pg)
#   CPUB_PG_PORT  TCP port on 127.0.0.1 (default 25432: below the kernel's
#                 ephemeral range 32768-60999, so a client connection left in
#                 TIME_WAIT after a test run can never hold it)
# A cluster already running in the directory is reused on the port it runs on.
set -euo pipefail
dir=${CPUB_PG_DIR:-/var/tmp/containerpub-pg}
port=${CPUB_PG_PORT:-25432}
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "pg.sh: no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
# The port a running cluster in $dir listens on (line 4 of postmaster.pid).
running_port() { [ -s "$dir/postmaster.pid" ] && sed -n 4p "$dir/postmaster.pid"; }
# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
as_pg() { if [ "$(id -u)" = 0 ]; then runuser -u postgres -- "$@"; else "$@"; fi; }

case "${1:-start}" in
start)
  if [ ! -s "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    [ "$(id -u)" = 0 ] && chown postgres:postgres "$dir"
    as_pg "$bin/initdb" -D "$dir" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 \
      -o "-p $port -c listen_addresses=127.0.0.1 -k $dir -c max_connections=200 -c fsync=off" start >/dev/null
  fi
  port=$(running_port) || true
  port=${port:-${CPUB_PG_PORT:-25432}}
  psql_() { as_pg "$bin/psql" -h "$dir" -p "$port" -U postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
  if [ "$(psql_ -d postgres -c "select 1 from pg_roles where rolname='cpub'")" != 1 ]; then
    psql_ -d postgres -c "create role cpub login password 'cpub' createdb"
  fi
  if [ "$(psql_ -d postgres -c "select 1 from pg_database where datname='cpub'")" != 1 ]; then
    psql_ -d postgres -c "create database cpub owner cpub"
  fi
  echo "postgres://cpub:cpub@127.0.0.1:$port/cpub"
  ;;
stop)
  if [ -s "$dir/PG_VERSION" ]; then as_pg "$bin/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true; fi
  ;;
url) p=$(running_port) || true; echo "postgres://cpub:cpub@127.0.0.1:${p:-$port}/cpub" ;;
*) echo "usage: $0 start|stop|url" >&2; exit 64 ;;
esac
