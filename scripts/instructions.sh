#!/usr/bin/env bash
# User-space instructions per call, cpub-proxy against nginx, counted by
# valgrind's callgrind: unlike timings on this machine (which swing 2x),
# instruction counts repeat, so this is the figure to compare commits with.
# Kernel work (system calls, TCP) is not counted; both proxies make the same
# system calls per call (docs/BENCHMARKS.md).
#
#   bash scripts/instructions.sh [REQUESTS]     (default 20000)
#
# Uses the stack of scripts/up.sh (starts it if needed), deploys a function
# `instr-bench` (examples/hello with room for the load), runs Debian's nginx
# (one process) in front of the same container, swaps the stack's cpub-proxy
# for one under callgrind on the same address, and for each of the two:
# 500 warm-up calls, counters zeroed, REQUESTS calls at 8 connections, dump.
# At the end the function is deleted and the normal proxy restarted.
#
#   CPUB_INSTR_PROXY_BIN   the cpub-proxy run under callgrind (default: this
#                          tree's release build), e.g. an older commit's
#   CPUB_INSTR_PROXY_ENV   extra settings for it, space-separated
#                          (`CPUB_EXECUTIONS=off`: the call without records)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
home=${CPUB_HOME:-/var/lib/containerpub}
proxy_listen=${CPUB_PROXY_LISTEN:-127.0.0.1:8080}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/containerpub-target}
bin=$CARGO_TARGET_DIR/release
out=$(mktemp -d /tmp/cpub-instructions.XXXXXX)
step() { printf '==> %s\n' "$*" >&2; }

missing=()
command -v valgrind >/dev/null 2>&1 || missing+=(valgrind)
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

step "stack (scripts/up.sh)"
bash scripts/up.sh >"$out/up.log" 2>&1 || { cat "$out/up.log" >&2; exit 1; }
cargo build --release --locked -p containerpub-loadtest >&2

step "deploy instr-bench"
mkdir -p "$out/fn"
cp -r examples/hello/. "$out/fn/"
sed -i 's/^name = "hello"/name = "instr-bench"/' "$out/fn/cpub.toml"
printf 'cpu = 2.0\npids = 512\n\n[env]\nFNHTTP_MAX_CONNECTIONS = "256"\n\n[scaling]\nmin_instances = 1\nmax_instances = 1\nconcurrency = 256\nidle_pause_s = 86400\nidle_stop_s = 86400\n' >>"$out/fn/cpub.toml"
"$bin/cpub" deploy "$out/fn" >&2
for _ in $(seq 1 100); do
  id=$(podman ps -q --filter label=cpub.function=instr-bench | head -n1)
  [ -n "$id" ] && break
  sleep 0.1
done
ip=$(podman inspect "$id" --format '{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}')

nginx_port=$((20000 + RANDOM % 20000))
cat >"$out/nginx.conf" <<EOF
worker_processes 1;
master_process off;
daemon off;
pid $out/nginx.pid;
error_log $out/nginx-error.log;
events { worker_connections 1024; }
http {
  access_log off;
  upstream fn { server $ip:8080; keepalive 64; }
  server {
    listen 127.0.0.1:$nginx_port;
    location /fn/instr-bench/ {
      proxy_pass http://fn/;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
EOF

cleanup() {
  [ -n "${nginx_pid:-}" ] && kill "$nginx_pid" 2>/dev/null || true
  [ -n "${proxy_vg:-}" ] && kill "$proxy_vg" 2>/dev/null || true
  sleep 1
  "$bin/cpub" delete instr-bench >/dev/null 2>&1 || true
  bash scripts/up.sh >"$out/up-again.log" 2>&1 || echo "restarting the stack failed: see $out/up-again.log" >&2
}
trap cleanup EXIT

step "nginx under callgrind on 127.0.0.1:$nginx_port"
valgrind --tool=callgrind --callgrind-out-file="$out/nginx.out" \
  "$(command -v nginx || echo /usr/sbin/nginx)" -c "$out/nginx.conf" >"$out/nginx-vg.log" 2>&1 &
nginx_pid=$!

step "cpub-proxy under callgrind on $proxy_listen"
proxy_pid=$(cat "$home/run/proxy.pid")
mapfile -t proxy_env < <(tr '\0' '\n' <"/proc/$proxy_pid/environ" | grep '^CPUB_')
read -r -a extra_env <<<"${CPUB_INSTR_PROXY_ENV:-}"
proxy_env+=("${extra_env[@]}")
kill "$proxy_pid"
while kill -0 "$proxy_pid" 2>/dev/null; do sleep 0.1; done
# Run a copy without its DWARF sections: Debian 12's valgrind (3.19) fails
# to read the debug info rustc 1.95 writes and then drops the binary's
# symbol table too, so every cost of the proxy was attributed to `???`.
# The symbol table alone names each function (inlined code counts for the
# function it was inlined into). The counts do not change.
objcopy --strip-debug "${CPUB_INSTR_PROXY_BIN:-$bin/cpub-proxy}" "$out/cpub-proxy"
env "${proxy_env[@]}" valgrind --tool=callgrind --callgrind-out-file="$out/proxy.out" \
  "$out/cpub-proxy" >"$out/proxy-vg.log" 2>&1 &
proxy_vg=$!
echo "$proxy_vg" >"$home/run/proxy.pid"

measure() { # name url pid
  for _ in $(seq 1 300); do curl -fsS "$2" >/dev/null 2>&1 && break; sleep 0.2; done
  "$bin/cpub-loadtest" "$2" -c 8 -n 500 >/dev/null
  callgrind_control -z "$3" >/dev/null 2>&1
  "$bin/cpub-loadtest" "$2" -c 8 -n "$requests" --json >"$out/$1-load.json"
  callgrind_control -d "$3" >/dev/null 2>&1
  sleep 1
  local dump
  dump=$(ls -t "$out/$1.out".* | head -n1)
  awk '/^summary:/ {print $2}' "$dump"
}

nginx_ir=$(measure nginx "http://127.0.0.1:$nginx_port/fn/instr-bench/" "$nginx_pid")
proxy_ir=$(measure proxy "http://$proxy_listen/fn/instr-bench/" "$proxy_vg")
for f in nginx proxy; do
  # Every call must have succeeded, or the counts mean nothing.
  ok=$(grep -o '"ok": *[0-9]*' "$out/$f-load.json" | head -n1 | grep -o '[0-9]*$')
  if [ "${ok:-0}" != "$requests" ]; then
    echo "$f: only ${ok:-0} of $requests calls succeeded (see $out/$f-load.json)" >&2
    exit 1
  fi
done

awk -v n="$requests" -v a="$nginx_ir" -v b="$proxy_ir" 'BEGIN {
  printf "user-space instructions per call (callgrind, %d calls at 8 connections)\n", n
  printf "  nginx       %9.0f\n", a / n
  printf "  cpub-proxy  %9.0f\n", b / n
  printf "  cpub-proxy/nginx  %.3f\n", b / a
}'
echo "callgrind dumps in $out (callgrind_annotate --threshold=100 $out/proxy.out.1)"
