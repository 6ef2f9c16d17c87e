#!/usr/bin/env bash
# Starts (or reuses) ContainerPub's local PostgreSQL cluster in a data
# directory and prints its URL. Usage: scripts/pg.sh start|stop|url
#   CPUB_PG_DIR       data directory (default /var/tmp/containerpub-pg)
#   CPUB_PG_PORT      TCP port on 127.0.0.1 (default 25432: below the kernel's
#                     ephemeral range 32768-60999, so a client connection left
#                     in TIME_WAIT after a test run can never hold it)
#   CPUB_PG_CREATEDB  1 (default, the test cluster: the tests make a database
#                     per test) gives the role `cpub` CREATEDB; 0 (scripts/up.sh,
#                     the stack) does not
#   CPUB_PG_FSYNC     on|off: whether the server flushes to disk (WAL, data
#                     files). Default off for the test cluster (CREATEDB=1:
#                     its databases are made and thrown away by the tests),
#                     on for the stack (CREATEDB=0): with fsync off, a crash
#                     of the machine or a power loss can corrupt the whole
#                     cluster, not only lose its last transactions.
# A cluster already running in the directory is reused on the port it runs
# on. One running with fsync off where on is asked for (by default or by
# CPUB_PG_FSYNC) is stopped, its files flushed (`initdb --sync-only`: what
# it wrote without flushing is made durable first, as PostgreSQL's
# documentation of fsync asks) and started with fsync on; its clients
# reconnect. From on to off only when CPUB_PG_FSYNC=off says so.
#
# Locked down (and an older cluster made with `--auth=trust` is migrated on
# the next `start`: pg_hba.conf rewritten, password set, configuration
# reloaded):
#   - no `trust` anywhere: pg_hba.conf is written by this script;
#   - the superuser `postgres` only by peer authentication over the Unix
#     socket (in the data directory, mode 0700) for the `postgres` OS user
#     (`runuser -u postgres -- psql -h DIR -p PORT`); refused over TCP;
#   - the application role `cpub` (no SUPERUSER, CREATEROLE, REPLICATION,
#     BYPASSRLS; CREATEDB only when CPUB_PG_CREATEDB=1) owns the database
#     `cpub` and logs in with a password (scram-sha-256) generated once into
#     DIR/cpub-password (mode 0600, owned by whoever runs this script: root).
# The printed URL holds that password: keep it in mode-0600 files only.
set -euo pipefail
dir=${CPUB_PG_DIR:-/var/tmp/containerpub-pg}
port=${CPUB_PG_PORT:-25432}
createdb=${CPUB_PG_CREATEDB:-1}
pwfile=$dir/cpub-password
bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
[ -x "$bin/initdb" ] || { echo "pg.sh: no PostgreSQL server binaries under /usr/lib/postgresql" >&2; exit 1; }
case "$createdb" in 0|1) ;; *) echo "pg.sh: CPUB_PG_CREATEDB must be 0 or 1" >&2; exit 64 ;; esac
fsync=${CPUB_PG_FSYNC:-$([ "$createdb" = 1 ] && echo off || echo on)}
case "$fsync" in on|off) ;; *) echo "pg.sh: CPUB_PG_FSYNC must be on or off" >&2; exit 64 ;; esac
root() { [ "$(id -u)" = 0 ]; }
# The port a running cluster in $dir listens on (line 4 of postmaster.pid).
running_port() { [ -s "$dir/postmaster.pid" ] && sed -n 4p "$dir/postmaster.pid"; }
# PostgreSQL refuses to run as root: run it as the postgres user when we are root.
# Without fd 9 (the lock below): a server started here would hold it for good.
as_pg() { if root; then runuser -u postgres -- "$@" 9>&-; else "$@" 9>&-; fi; }
# start and stop take turns, also across processes (up.sh and test.sh in two
# shells): two at once on a stopped cluster raced, two `initdb` or two
# `pg_ctl start`, and one failed. The lock is the data directory itself
# (flock on it): one lock whatever path names it, no file beside it in a
# directory others may write (/var/tmp), and only its owner and root may
# open it (mode 0700).
take_turn() {
  if [ ! -d "$dir" ]; then mkdir -p "$dir"; chmod 700 "$dir"; fi
  exec 9<"$dir"
  flock -w 300 9 || { echo "pg.sh: waited 300 s for the lock on $dir (another pg.sh start or stop)" >&2; exit 1; }
}
url() {
  [ -s "$pwfile" ] || { echo "pg.sh: no $pwfile yet: run scripts/pg.sh start" >&2; exit 1; }
  echo "postgres://cpub:$(cat "$pwfile")@127.0.0.1:$1/cpub"
}
# Writes stdin to $1 (owned by the cluster's user, mode 0600; replaced by
# a rename, so the server never reads half a file) when it differs; exit
# status 0 when it changed the file.
put_conf() {
  local tmp; tmp=$(mktemp "$1.XXXXXX")
  cat >"$tmp"
  if [ -f "$1" ] && cmp -s "$tmp" "$1"; then rm -f "$tmp"; return 1; fi
  chmod 600 "$tmp"
  root && chown postgres:postgres "$tmp"
  mv -f "$tmp" "$1"
}

case "${1:-start}" in
start)
  take_turn
  if [ ! -s "$dir/PG_VERSION" ]; then
    mkdir -p "$dir"
    root && chown postgres:postgres "$dir"
    # Data checksums: a page damaged on disk is reported when read, not
    # served (a cluster made without them keeps running without).
    as_pg "$bin/initdb" -D "$dir" -U postgres --auth-local=peer --auth-host=scram-sha-256 -E UTF8 \
      --data-checksums >/dev/null
  fi
  if [ ! -s "$pwfile" ]; then
    # Made once; `ln` is atomic, so two starts at once agree on one password.
    tmp=$(mktemp "$dir/.cpub-password.XXXXXX")
    head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n' >"$tmp"
    ln "$tmp" "$pwfile" 2>/dev/null || true
    rm -f "$tmp"
  fi
  chmod 600 "$pwfile"
  # Peer authentication maps the OS user to `postgres`: the postgres OS
  # user when we are root, else the user who owns the cluster.
  admin=postgres
  root || admin=$(id -un)
  changed=0
  printf '# Written by scripts/pg.sh (rewritten on every start).\ncpub_admin  %s  postgres\n' "$admin" \
    | put_conf "$dir/pg_ident.conf" && changed=1
  put_conf "$dir/pg_hba.conf" <<'HBA' && changed=1
# Written by scripts/pg.sh (rewritten on every start): no `trust` anywhere.
# TYPE  DATABASE  USER      ADDRESS       METHOD
# The superuser: only its OS user (peer) over the Unix socket.
local   all       postgres                peer map=cpub_admin
host    all       postgres  all           reject
# Everyone else: a password, scram-sha-256.
local   all       all                     scram-sha-256
host    all       all       127.0.0.1/32  scram-sha-256
host    all       all       ::1/128       scram-sha-256
HBA
  # On the command line: it wins over any configuration file.
  options() { echo "-p $1 -c listen_addresses=127.0.0.1 -k $dir -c max_connections=200 -c fsync=$fsync -c password_encryption=scram-sha-256"; }
  if ! as_pg "$bin/pg_ctl" -D "$dir" status >/dev/null 2>&1; then
    as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 -o "$(options "$port")" start >/dev/null
  elif [ "$changed" = 1 ]; then
    as_pg "$bin/pg_ctl" -D "$dir" reload >/dev/null
  fi
  port=$(running_port) || true
  port=${port:-${CPUB_PG_PORT:-25432}}
  # -X: no ~/.psqlrc of the postgres user changes what psql prints.
  psql_() { as_pg "$bin/psql" -X -h "$dir" -p "$port" -U postgres -d postgres -v ON_ERROR_STOP=1 -qtA "$@"; }
  running_fsync=$(psql_ -c "show fsync")
  case "$running_fsync" in on|off) ;; *) echo "pg.sh: 'show fsync' answered '$running_fsync'" >&2; exit 1 ;; esac
  if [ "$running_fsync" != "$fsync" ] && { [ "$fsync" = on ] || [ -n "${CPUB_PG_FSYNC:-}" ]; }; then
    echo "pg.sh: restarting the cluster in $dir with fsync $fsync (it ran with fsync $running_fsync)" >&2
    as_pg "$bin/pg_ctl" -D "$dir" -w -t 60 -m fast stop >/dev/null
    if [ "$fsync" = on ]; then as_pg "$bin/initdb" --sync-only -D "$dir" >/dev/null; fi
    as_pg "$bin/pg_ctl" -D "$dir" -l "$dir/server.log" -w -t 60 -o "$(options "$port")" start >/dev/null
  fi
  if [ "$(psql_ -c "show password_encryption")" != scram-sha-256 ]; then
    psql_ -c "alter system set password_encryption = 'scram-sha-256'" -c "select pg_reload_conf()" >/dev/null
  fi
  if [ "$(psql_ -c "select 1 from pg_roles where rolname='cpub'")" != 1 ]; then
    psql_ -c "create role cpub login"
  fi
  flags="nosuperuser nocreaterole noreplication nobypassrls"
  if [ "$createdb" = 1 ]; then flags="$flags createdb"; else flags="$flags nocreatedb"; fi
  # On stdin, not in argv: the password never shows in `ps`.
  psql_ <<SQL
set password_encryption = 'scram-sha-256';
alter role cpub with login $flags password '$(cat "$pwfile")';
SQL
  if [ "$(psql_ -c "select 1 from pg_database where datname='cpub'")" != 1 ]; then
    psql_ -c "create database cpub owner cpub"
  fi
  psql_ -c "alter database cpub owner to cpub" \
    -c "revoke connect on database postgres, template1 from public"
  url "$port"
  ;;
stop)
  if [ -d "$dir" ]; then take_turn; fi
  if [ -s "$dir/PG_VERSION" ]; then as_pg "$bin/pg_ctl" -D "$dir" -m fast stop >/dev/null 2>&1 || true; fi
  ;;
url) p=$(running_port) || true; url "${p:-$port}" ;;
*) echo "usage: $0 start|stop|url" >&2; exit 64 ;;
esac
