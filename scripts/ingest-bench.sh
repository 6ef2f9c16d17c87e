#!/usr/bin/env bash
# Execution records' ingest CPU (issue 11): runs proxy/tests/ingest_bench.rs
# (the proxy's real shipper → HTTP → a real cpub-control → PostgreSQL) once
# per round and per cpub-control binary, alternating the order per round,
# each run against a fresh database in a PostgreSQL cluster of its own (so
# every process of the cluster is the measurement's), and prints the
# driver's INGEST lines prefixed with the binary's label.
#
# Usage: scripts/ingest-bench.sh ROUNDS LABEL=CONTROL_BIN [LABEL=CONTROL_BIN…]
#   CPUB_BENCH_RECORDS   records per run (default 200000)
#   INGEST_PG_DIR        the cluster's data directory (default /var/tmp/ingest-bench-pg)
#   INGEST_PG_PORT       its port (default 25491)
#   INGEST_DRIVER        the driver test binary (default: built here with
#                        `cargo test --no-run`)
# Needs root (the cluster's superuser is reached by peer authentication as
# the postgres user, as scripts/pg.sh sets it up). Run it at normal
# priority on a machine as quiet as can be; the figure that matters is CPU
# seconds per record, not the wall time.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
rounds=${1:?usage: $0 ROUNDS LABEL=CONTROL_BIN...}
shift
[ $# -ge 1 ] || { echo "usage: $0 ROUNDS LABEL=CONTROL_BIN..." >&2; exit 64; }
pgdir=${INGEST_PG_DIR:-/var/tmp/ingest-bench-pg}
pgport=${INGEST_PG_PORT:-25491}
# Without flushing by default, as every figure of docs/BENCHMARKS.md made
# with this script (INGEST_PG_FSYNC=on for the stack's setting).
url=$(CPUB_PG_DIR=$pgdir CPUB_PG_PORT=$pgport CPUB_PG_CREATEDB=0 CPUB_PG_FSYNC=${INGEST_PG_FSYNC:-off} \
  bash "$here/scripts/pg.sh" start)
postmaster=$(head -n 1 "$pgdir/postmaster.pid")
driver=${INGEST_DRIVER:-}
if [ -z "$driver" ]; then
  driver=$(cd "$here" && cargo test -p containerpub-proxy --test ingest_bench --no-run --message-format=json 2>/dev/null \
    | sed -n 's/.*"executable":"\([^"]*ingest_bench[^"]*\)".*/\1/p' | tail -n 1)
fi
[ -x "$driver" ] || { echo "ingest-bench: no driver binary" >&2; exit 1; }
psql_admin() { runuser -u postgres -- psql -q -h "$pgdir" -p "$pgport" -d postgres -v ON_ERROR_STOP=1 "$@"; }
for ((round = 1; round <= rounds; round++)); do
  bins=("$@")
  # Alternate the order: reversed on even rounds.
  if ((round % 2 == 0)); then
    rev=(); for ((i = ${#bins[@]} - 1; i >= 0; i--)); do rev+=("${bins[i]}"); done; bins=("${rev[@]}")
  fi
  for spec in "${bins[@]}"; do
    label=${spec%%=*}
    bin=${spec#*=}
    psql_admin -c "DROP DATABASE IF EXISTS ingest_bench WITH (FORCE)" -c "CREATE DATABASE ingest_bench OWNER cpub"
    line=$(CPUB_BENCH_CONTROL_BIN=$bin CPUB_BENCH_DATABASE_URL=${url%/*}/ingest_bench CPUB_BENCH_PG_PID=$postmaster \
      "$driver" --ignored --exact ingest_cpu_per_record --nocapture 2>&1 | grep '^INGEST' || true)
    [ -n "$line" ] || { echo "ingest-bench: run of $label failed" >&2; exit 1; }
    echo "round=$round label=$label ${line#INGEST }"
  done
done
