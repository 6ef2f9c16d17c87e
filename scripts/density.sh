#!/usr/bin/env bash
# Density run (issue 15): starts DENSITY_N (default 300) real instances of as
# many functions on this node's Podman, one call each, lets them pause,
# resumes a sample, then calls DENSITY_EXTRA (default 20) more functions past
# an instance budget of DENSITY_N (eviction). Beside them, DENSITY_PROBES
# (default 10) functions on a second pool start from containers initialized
# ahead, timed before the DENSITY_N instances exist and with all of them
# live. The driver is the pool itself
# (benches/benches/density.rs): its own node name and network
# (DENSITY_NETWORK, default cpub-density on 10.95.0.0/20), no proxy, no
# control plane; one image built here from examples/hello.
# Bounded: the driver stops starting after DENSITY_DEADLINE_S (default 600)
# and the whole run is killed after DENSITY_DEADLINE_S + 300 s. Every
# container, the network and the image it made are removed on exit, also on
# failure or Ctrl-C. Other users of Podman are left alone. One run at a
# time: a second waits for the first to finish, its cleanup included
# (DENSITY_LOCK, default /run/lock/cpub-density.lock).
# Usage: scripts/density.sh   (root, Podman set up by scripts/setup-host.sh)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# The same build directory as scripts/compare.sh (not the work tree's).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/containerpub-target}
export DENSITY_N=${DENSITY_N:-300}
export DENSITY_EXTRA=${DENSITY_EXTRA:-20}
export DENSITY_DEADLINE_S=${DENSITY_DEADLINE_S:-600}
export DENSITY_NETWORK=${DENSITY_NETWORK:-cpub-density}
export DENSITY_SUBNET=${DENSITY_SUBNET:-10.95.0.0/20}
export DENSITY_NODE=${DENSITY_NODE:-density-$$}
export DENSITY_IMAGE=localhost/cpub-density-hello:$$
case "$DENSITY_N$DENSITY_EXTRA$DENSITY_DEADLINE_S" in (*[!0-9]*) echo "density: DENSITY_N, DENSITY_EXTRA and DENSITY_DEADLINE_S are numbers" >&2; exit 64;; esac
export DENSITY_PROBES=${DENSITY_PROBES:-10}
if [ "$((DENSITY_N + 2 * DENSITY_PROBES))" -gt 1024 ]; then echo "density: DENSITY_N + 2 × DENSITY_PROBES is at most 1024 (one bridge)" >&2; exit 64; fi

# One run at a time, its cleanup included: a second run beside the removal of
# the first one's 1,000 containers filled the bridge ("Exchange full") and
# measured a loaded machine. The lock is held until this script exits, after
# its cleanup (the EXIT trap runs with fd 9 still open).
lock=${DENSITY_LOCK:-/run/lock/cpub-density.lock}
exec 9>"$lock"
if ! flock -n 9; then
  echo "density: another run (or its cleanup) holds $lock; waiting up to 20 min"
  flock -w 1200 9 || { echo "density: $lock still held after 20 min" >&2; exit 75; }
fi

cleanup() {
  for node in "$DENSITY_NODE" "$DENSITY_NODE-probe"; do
    ids=$(podman ps -a -q --filter "label=cpub.node=$node" 2>/dev/null || true)
    if [ -n "$ids" ]; then
      echo "density: removing $(echo "$ids" | wc -l) containers left by node $node"
      # shellcheck disable=SC2086
      podman rm -f -t 0 $ids >/dev/null 2>&1 || true
    fi
  done
  podman rmi -f "$DENSITY_IMAGE" >/dev/null 2>&1 || true
  if [ -z "$(podman ps -a -q --filter "network=$DENSITY_NETWORK" 2>/dev/null)" ]; then
    podman network rm "$DENSITY_NETWORK" >/dev/null 2>&1 || true
  fi
  rm -rf "${ctx:-}"
}
trap cleanup EXIT

[ -x "$here/examples/hello/bin/hello" ] || bash "$here/examples/build.sh" >/dev/null
ctx=$(mktemp -d)
cp "$here/examples/hello/bin/hello" "$ctx/hello"
printf 'FROM scratch\nCOPY hello /hello\nENTRYPOINT ["/hello"]\n' > "$ctx/Containerfile"
podman build -q -t "$DENSITY_IMAGE" "$ctx" >/dev/null
echo "density: image $DENSITY_IMAGE, $DENSITY_N instances + $DENSITY_EXTRA past the budget, node $DENSITY_NODE, network $DENSITY_NETWORK ($DENSITY_SUBNET)"

cd "$here"
cargo build --release -p containerpub-benches --bench density >/dev/null 2>&1 \
  || cargo build --release -p containerpub-benches --bench density
timeout --signal=INT --kill-after=30 "$((DENSITY_DEADLINE_S + 300))" \
  cargo bench -q -p containerpub-benches --bench density
