#!/bin/bash
# Execution records on against off at a fixed rate: the CPU per call of
# cpub-proxy, cpub-control and all PostgreSQL processes (utime + stime from
# /proc, clock ticks), pairs alternating in order. Runs against the stack of
# `bash scripts/up.sh` (its hello function), restarting its proxy with
# CPUB_EXECUTIONS=on|off for each run (SIGTERM, then the same environment
# as up.sh). Leaves the proxy running with the last run's setting: run
# `bash scripts/down.sh && bash scripts/up.sh` after.
#   PAIRS=3 DUR=15 RATE=8000 bash docs/benchmarks/records-cpu-fixed-rate.sh
set -u
home=${CPUB_HOME:-/var/lib/containerpub}
bin=${CPUB_BIN:-/var/tmp/containerpub-target/release}
LT=${LT:-$bin/cpub-loadtest}
RATE=${RATE:-8000}; DUR=${DUR:-8}
node=$(tr -d '[:space:]' </proc/sys/kernel/hostname)
token=$(cat $home/token)
ticks() { # sum utime+stime (clock ticks) of the given pids incl. threads
  local t=0; for p in "$@"; do [ -r /proc/$p/stat ] && t=$((t + $(awk '{print $14+$15}' /proc/$p/stat))); done; echo $t; }
pgpids() { pgrep -f 'postgres' | tr '\n' ' '; }
restart_proxy() {
  local mode=$1 pid; pid=$(cat $home/run/proxy.pid); kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done
  (umask 077; CPUB_TOKEN=$token $bin/cpub node-token create "$node" --replace >$home/run/node-token)
  CPUB_EXECUTIONS=$mode CPUB_PROXY_LISTEN=127.0.0.1:8080 CPUB_PROXY_ADMIN_LISTEN=127.0.0.1:9464 CPUB_URL=http://127.0.0.1:7070 CPUB_NODE=$node \
  CPUB_NODE_TOKEN=$(cat $home/run/node-token) CPUB_STATE_DIR=$home/proxy \
    nohup $bin/cpub-proxy >>$home/logs/cpub-proxy.log 2>&1 &
  echo $! >$home/run/proxy.pid
  for i in $(seq 100); do curl -sf http://127.0.0.1:8080/fn/hello/ >/dev/null && break; sleep 0.1; done
}
for pair in $(seq ${PAIRS:-4}); do
  order="on off"; [ $((pair % 2)) = 0 ] && order="off on"
  for mode in $order; do
    restart_proxy $mode
    $LT http://127.0.0.1:8080/fn/hello/ -r $RATE -d 2s -c 32 >/dev/null 2>&1   # warm
    sleep 1
    pp=$(cat $home/run/proxy.pid); cp=$(cat $home/run/control.pid); pg=$(pgpids)
    a=$(ticks $pp); b=$(ticks $cp); c=$(ticks $pg); t0=$(date +%s.%N)
    out=$($LT http://127.0.0.1:8080/fn/hello/ -r $RATE -d ${DUR}s -c 32 --json 2>/dev/null)
    sleep 2  # let the last batches be shipped and stored
    a2=$(ticks $pp); b2=$(ticks $cp); c2=$(ticks $pg)
    n=$(echo "$out" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d["ok"], d["latency_ms"]["p50"], d["latency_ms"]["p99"])')
    set -- $n
    python3 -c "
n=$1; tk=100
print('pair $pair $mode: calls', n, 'proxy %.2f  control %.2f  pg %.2f  us/call  p50 $2 p99 $3' % (($a2-$a)*1e6/tk/n, ($b2-$b)*1e6/tk/n, ($c2-$c)*1e6/tk/n))"
  done
done
