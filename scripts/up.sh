#!/usr/bin/env bash
# One command to run the whole ContainerPub stack on this machine with
# embedded defaults: installs what is missing (podman, runc, ...),
# starts the Podman API socket and a local PostgreSQL cluster, builds and
# starts cpub-control and cpub-proxy, deploys examples/hello with `cpub` and
# calls it through the proxy. Stop everything with scripts/down.sh.
#
#   CPUB_HOME            state, logs and pid files (default /var/lib/containerpub)
#   CPUB_CONTROL_LISTEN  control plane address (default 127.0.0.1:7070)
#   CPUB_PROXY_LISTEN    proxy address (default 127.0.0.1:8080)
#   CPUB_PROXY_ADMIN_LISTEN  proxy admin address, /metrics (default 127.0.0.1:9464)
#   CPUB_NODE            the proxy's node name (default: the host name)
#
# The proxy authenticates with a node credential (it may only watch routes
# and report crashes), minted here by the admin with `cpub node-token
# create` and kept in $CPUB_HOME/run/node-token (mode 0600); never with the
# admin token.
#   CPUB_BIN_DIR         where the `cpub` command is linked (default /usr/local/bin)
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
home=${CPUB_HOME:-/var/lib/containerpub}
control_listen=${CPUB_CONTROL_LISTEN:-127.0.0.1:7070}
proxy_listen=${CPUB_PROXY_LISTEN:-127.0.0.1:8080}
node=${CPUB_NODE:-$(tr -d '[:space:]' </proc/sys/kernel/hostname)}
admin_listen=${CPUB_PROXY_ADMIN_LISTEN:-127.0.0.1:9464}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/containerpub-target}
mkdir -p "$home/logs" "$home/run"

step() { printf '==> %s\n' "$*"; }
wait_http() { # url what pidfile
  for _ in $(seq 1 300); do
    curl -fsS "$1" >/dev/null 2>&1 && return 0
    kill -0 "$(cat "$3")" 2>/dev/null || { echo "$2 exited; last log lines:" >&2; tail -n 30 "$home/logs/$2.log" >&2; exit 1; }
    sleep 0.1
  done
  echo "$2 did not answer at $1" >&2; exit 1
}
running() { [ -f "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

step "host setup"
bash scripts/setup-host.sh
step "PostgreSQL"
# The stack's role owns its database and may not create others; the URL
# holds its password: a root-only file (an older world-readable one is
# replaced).
rm -f "$home/run/database-url"
(umask 077
 CPUB_PG_DIR=${CPUB_PG_DIR:-$home/postgres} CPUB_PG_PORT=${CPUB_PG_PORT:-25433} CPUB_PG_CREATEDB=0 \
   bash scripts/pg.sh start >"$home/run/database-url")
echo "${CPUB_PG_DIR:-$home/postgres}" >"$home/run/pg-dir"

step "build (release)"
cargo build --release --locked -p containerpub-control -p containerpub-proxy -p containerpub-cli
bash examples/build.sh >/dev/null
bin=$CARGO_TARGET_DIR/release

# `cpub` on PATH (a link to the build, so a rebuild updates it), with bash
# completion where the system has a place for it.
bin_dir=${CPUB_BIN_DIR:-/usr/local/bin}
mkdir -p "$bin_dir"
ln -sfn "$bin/cpub" "$bin_dir/cpub"
if [ -d /etc/bash_completion.d ] && [ -w /etc/bash_completion.d ]; then
  "$bin/cpub" completions bash >/etc/bash_completion.d/cpub
fi

# One API token for this installation, created once and kept private.
if [ ! -s "$home/token" ]; then
  (umask 077; echo "cpub_$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')" >"$home/token")
fi
token=$(cat "$home/token")

step "cpub-control on http://$control_listen"
if ! running "$home/run/control.pid"; then
  CPUB_DATABASE_URL=$(cat "$home/run/database-url") CPUB_CONTROL_LISTEN=$control_listen \
  CPUB_DATA_DIR=$home/control CPUB_PUBLIC_URL=http://$proxy_listen CPUB_BOOTSTRAP_TOKEN=$token \
    nohup "$bin/cpub-control" >>"$home/logs/cpub-control.log" 2>&1 &
  echo $! >"$home/run/control.pid"
fi
wait_http "http://$control_listen/healthz" cpub-control "$home/run/control.pid"

export CPUB_URL=http://$control_listen
"$bin/cpub" login --url "$CPUB_URL" --token-stdin <<<"$token" >/dev/null

step "cpub-proxy on http://$proxy_listen (node $node)"
if ! running "$home/run/proxy.pid"; then
  # A fresh credential for each start: the old one (if any) stops working.
  (umask 077; CPUB_TOKEN=$token "$bin/cpub" node-token create "$node" --replace \
     >"$home/run/node-token")
  CPUB_PROXY_LISTEN=$proxy_listen CPUB_PROXY_ADMIN_LISTEN=$admin_listen CPUB_URL=http://$control_listen CPUB_NODE=$node \
  CPUB_NODE_TOKEN=$(cat "$home/run/node-token") CPUB_STATE_DIR=$home/proxy \
    nohup "$bin/cpub-proxy" >>"$home/logs/cpub-proxy.log" 2>&1 &
  echo $! >"$home/run/proxy.pid"
fi
wait_http "http://$proxy_listen/healthz" cpub-proxy "$home/run/proxy.pid"

step "deploy examples/hello with cpub"
export CPUB_URL=http://$control_listen
cpub=$bin_dir/cpub
"$cpub" login --url "$CPUB_URL" --token-stdin <<<"$token" >/dev/null
"$cpub" deploy "$root/examples/hello"

step "call hello through the proxy"
curl -sS -D "$home/run/last-headers" "http://$proxy_listen/fn/hello/"
grep -i '^server-timing' "$home/run/last-headers" || true

cat <<MSG

ContainerPub is running.
  control plane  http://$control_listen   (API under /api/v1; admin token in $home/token)
  admin login    $bin/cpub login --url http://$control_listen --token-stdin <$home/token
                 (user admin; add users with \`cpub user add NAME --role developer\`)
  proxy          http://$proxy_listen/fn/<name>/   (node $node; credential in $home/run/node-token)
  metrics        http://$admin_listen/metrics   (the proxy's admin listener)
  hello          http://$proxy_listen/fn/hello/
  CLI            cpub = $bin_dir/cpub -> $bin/cpub   (logged in: ~/.config/cpub/config.toml)
  logs           $home/logs/
Stop everything: bash scripts/down.sh
MSG
