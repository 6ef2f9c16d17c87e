#!/usr/bin/env bash
# The proxy comparison of docs/BENCHMARKS.md: cpub-proxy vs nginx vs direct on
# one function container (alternating rounds), cold start vs raw podman,
# resume, and memory under idle keep-alive connections.
#   bash scripts/compare.sh [--rounds N] [--json FILE] [--duration SECS] [--no-wrk] ...
# (all flags: bash scripts/compare.sh --help). Takes ~1 min per round.
# Installs what is missing (nginx, wrk), starts Podman's API socket and a
# PostgreSQL cluster of its own (fsync on, as the stack's; left running, as
# the test cluster is), builds the release binaries, raises the open-files
# limit (cpub-proxy and nginx inherit it) and runs the `compare` binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/containerpub-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*" >&2; }

missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v wrk >/dev/null 2>&1 || missing+=(wrk)
command -v ss >/dev/null 2>&1 || missing+=(iproute2)
if [ ${#missing[@]} -gt 0 ]; then
  step "installing ${missing[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >&2
fi

step "host setup (podman, runc, API socket)"
bash scripts/setup-host.sh >&2
step "PostgreSQL"
# A cluster of its own that flushes to disk as the stack's does (the test
# cluster does not): execution records' cost includes their WAL's flush.
CPUB_TEST_DATABASE_URL=$(CPUB_PG_DIR=${COMPARE_PG_DIR:-/var/tmp/containerpub-pg-compare} \
  CPUB_PG_PORT=${COMPARE_PG_PORT:-25434} CPUB_PG_FSYNC=on bash scripts/pg.sh start)
export CPUB_TEST_DATABASE_URL

step "example functions"
bash examples/build.sh >&2

step "release build"
cargo build --release --locked -p containerpub-proxy -p containerpub-control \
  -p containerpub-cli -p containerpub-e2e --bins >&2

# 10,000 idle client connections: this process holds one end, cpub-proxy the
# other (it inherits this limit), plus headroom.
ulimit -Hn 65536 2>/dev/null || true
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

step "compare"
export CPUB_BIN_DIR="$CARGO_TARGET_DIR/release"
exec "$CPUB_BIN_DIR/compare" "$@"
