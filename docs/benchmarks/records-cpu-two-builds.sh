#!/bin/bash
# Records' CPU per call of two builds side by side, at a fixed rate: for each
# build directory given (holding cpub-control, cpub-proxy and cpub), the
# control plane and the proxy of the stack of `bash scripts/up.sh` are
# restarted from it (records on), then ROUNDS runs of DUR s at RATE calls/s
# against its hello function, builds alternating; CPU (utime + stime, clock
# ticks) of cpub-proxy, cpub-control and all PostgreSQL processes, per call.
# Leaves the last build running: `bash scripts/down.sh && bash scripts/up.sh`
# after.
#   RATE=16000 ROUNDS=3 bash docs/benchmarks/records-cpu-two-builds.sh /var/tmp/old /var/tmp/new
set -u
home=${CPUB_HOME:-/var/lib/containerpub}
LT=${LT:-/var/tmp/cpub-rel/release/cpub-loadtest}
RATE=${RATE:-16000}; DUR=${DUR:-20}
node=$(tr -d '[:space:]' </proc/sys/kernel/hostname)
token=$(cat $home/token)
ticks() { awk '{print $14+$15}' /proc/$1/stat; }
pg_ticks() { local t=0; for p in $(pgrep -f postgres); do [ -r /proc/$p/stat ] && t=$((t + $(ticks $p))); done; echo $t; }
stop() { local pid; pid=$(cat $home/run/$1.pid); kill -TERM $pid; while kill -0 $pid 2>/dev/null; do sleep 0.1; done; }
start() { # build dir
  stop proxy; stop control
  CPUB_DATABASE_URL=$(cat $home/run/database-url) CPUB_CONTROL_LISTEN=127.0.0.1:7070 \
  CPUB_DATA_DIR=$home/control CPUB_PUBLIC_URL=http://127.0.0.1:8080 CPUB_BOOTSTRAP_TOKEN=$token \
    nohup $1/cpub-control >>$home/logs/cpub-control.log 2>&1 &
  echo $! >$home/run/control.pid
  for i in $(seq 100); do curl -sf http://127.0.0.1:7070/healthz >/dev/null && break; sleep 0.1; done
  (umask 077; CPUB_TOKEN=$token $1/cpub node-token create "$node" --replace >$home/run/node-token 2>/dev/null)
  CPUB_EXECUTIONS=on CPUB_PROXY_LISTEN=127.0.0.1:8080 CPUB_PROXY_ADMIN_LISTEN=127.0.0.1:9464 CPUB_URL=http://127.0.0.1:7070 CPUB_NODE=$node \
  CPUB_NODE_TOKEN=$(cat $home/run/node-token) CPUB_STATE_DIR=$home/proxy \
    nohup $1/cpub-proxy >>$home/logs/cpub-proxy.log 2>&1 &
  echo $! >$home/run/proxy.pid
  for i in $(seq 100); do curl -sf http://127.0.0.1:8080/fn/hello/ >/dev/null && break; sleep 0.1; done
}
for round in $(seq ${ROUNDS:-3}); do
  for dir in "$@"; do
    start $dir
    $LT http://127.0.0.1:8080/fn/hello/ -r $RATE -d 3s -c 32 >/dev/null 2>&1; sleep 1  # warm
    pp=$(cat $home/run/proxy.pid); cp=$(cat $home/run/control.pid)
    a=$(ticks $pp); b=$(ticks $cp); c=$(pg_ticks)
    out=$($LT http://127.0.0.1:8080/fn/hello/ -r $RATE -d ${DUR}s -c 32 --json 2>/dev/null)
    sleep 1.5  # the last bodies posted and stored
    a2=$(ticks $pp); b2=$(ticks $cp); c2=$(pg_ticks)
    n=$(echo "$out" | python3 -c 'import json,sys; print(json.load(sys.stdin)["ok"])')
    python3 -c "
n=$n; us=lambda t: t*1e4/n
print('round $round $dir: calls', n, 'proxy %.2f  control %.3f  pg %.3f  control+pg %.3f  us/call' % (us($a2-$a), us($b2-$b), us($c2-$c), us($b2-$b+$c2-$c)))"
  done
done
