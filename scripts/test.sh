#!/usr/bin/env bash
# Runs every check and test of ContainerPub on the real stack: installs and
# starts what the tests need (Podman + its API socket, Go for the go
# template's test, a PostgreSQL cluster),
# builds the example functions, then fmt, clippy, all tests and a short
# run of every fuzz target (scripts/fuzz.sh).
# This is the README's test command; .ci/run calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/containerpub-target}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

step() { printf '\n==> %s\n' "$*"; }

step "host setup (podman, runc, API socket)"
bash scripts/setup-host.sh
step "test toolchains (go for the go template's test)"
# e2e/tests/languages.rs builds the `cpub init --template go` function with
# Debian's Go (the test fails, not skips, without it).
if ! command -v go >/dev/null 2>&1; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null \
    || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq golang-go >/dev/null; }
fi
go version
step "PostgreSQL"
CPUB_TEST_DATABASE_URL=$(bash scripts/pg.sh start)
export CPUB_TEST_DATABASE_URL
# The URL holds the role's password: show it without.
echo "$CPUB_TEST_DATABASE_URL" | sed 's|//\([^:/@]*\):[^@]*@|//\1:***@|'

step "images in Podman's stores before the tests"
# A test removes the images it built (e2e: the Stack's drop, RemoveImages);
# what is new after the tests, other than the fixtures kept on purpose, is
# a leak. Untagged leftovers piled up by the hundred once, and Podman 4.3
# lists a store at about 0.4 s per image it holds: every `podman images`
# then took minutes.
images_before=$(mktemp)
trap 'rm -f "$images_before"' EXIT
store_images() {  # every image id of the instances' and the build store
  podman images -q --no-trunc
  podman --url "unix://${CPUB_BUILD_PODMAN_SOCKET:-/run/podman/cpub-build.sock}" images -q --no-trunc
}
store_images | sort -u > "$images_before"
wc -l < "$images_before"

step "example functions (static binaries)"
bash examples/build.sh

step "format and lints"
cargo fmt --all --check
bash scripts/check-headers.sh
cargo clippy --workspace --all-targets --locked -- -D warnings
cargo test -p containerpub-e2e --locked --test crate_graph  # which crate may depend on which, no cycles

step "Prometheus alert rules (promtool: check, and a unit test per alert) and the dashboard's queries"
promtool check rules monitoring/prometheus/alerts.yml
(cd monitoring/prometheus && promtool test rules alerts_test.yml)
bash scripts/check-dashboard.sh  # JSON, a query in every panel, every query parses as PromQL

step "build binaries used by the end-to-end tests"
cargo build --workspace --bins --locked

step "tests"
cargo test --workspace --locked
cargo test --manifest-path examples/Cargo.toml --locked

step "fuzz smoke (proxy parsers and data path, coverage-guided, 10 s per target)"
bash scripts/fuzz.sh "${CPUB_FUZZ_SECONDS:-10}"

step "no container left behind by the tests"
left=$(podman ps -a --filter label=cpub.managed=true --format '{{.ID}} {{index .Labels "cpub.node"}}' | awk '$2 ~ /^(e2e|test)-/')
if [ -n "$left" ]; then
  echo "containers leaked by tests:"; echo "$left"; exit 1
fi
echo "none"

step "no image left behind by the tests"
# The fixtures built once and reused (podman/src/testing.rs, pool/tests/precreate.rs).
kept=$(for fixture in localhost/cpub-test-busybox:1 localhost/cpub-test-precreate:1; do
  podman images -q --no-trunc --filter "reference=$fixture"
done)
left=$(store_images | sort -u | comm -23 - "$images_before" | grep -vxF -f <(echo "$kept"; echo) || true)
if [ -n "$left" ]; then
  echo "images left by tests:"
  for id in $left; do
    podman image inspect --format '{{.Id}} {{.NamesHistory}} {{.Created}}' "$id" 2>/dev/null \
      || podman --url "unix://${CPUB_BUILD_PODMAN_SOCKET:-/run/podman/cpub-build.sock}" \
        image inspect --format '{{.Id}} {{.NamesHistory}} {{.Created}} (build store)' "$id" 2>/dev/null \
      || echo "$id"
  done
  exit 1
fi
echo "none"

step "disk taken by the builds (CI machines have little to spare)"
du -sh "$CARGO_TARGET_DIR" "${CARGO_FUZZ_TARGET_DIR:-/var/tmp/containerpub-fuzz-target}" 2>/dev/null || true
df -h / | tail -n 1
