#!/usr/bin/env bash
# Runs the proxy's coverage-guided fuzz targets (proxy/fuzz, cargo-fuzz
# layout) for SECONDS each (default 60): request head + framing, answer
# head, the chunked decoder, invocation paths, the whole data path end to
# end, and the binary execution batch the shipper sends. The HTTP
# properties are those of proxy/tests/support/oracle.rs (no panic; the
# proxy, httparse, fnhttp, hyper and a strict RFC 9112 reference agree on
# where each message ends); the batch's are in its target (no panic, what
# decodes encodes back to the same batch).
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]
#
# Only a stable toolchain is needed: cargo-fuzz is installed when missing
# (about 5 minutes), RUSTC_BOOTSTRAP=1 lets its -Z flags through, and no
# sanitizer is used (-s none; the targets are safe Rust). A crash leaves its
# input in proxy/fuzz/artifacts/TARGET/ (add it to the regression tests);
# the other targets still run, and the script then fails naming the targets
# that crashed. New corpus entries go to
# proxy/fuzz/corpus/TARGET/ (not committed); proxy/fuzz/seeds/ starts it.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(request_head response_head chunked path end_to_end execution_batch)
fi
export CARGO_TARGET_DIR=${CARGO_FUZZ_TARGET_DIR:-/var/tmp/containerpub-fuzz-target}
export RUSTC_BOOTSTRAP=1

if ! command -v cargo-fuzz >/dev/null && [ ! -x "$HOME/.cargo/bin/cargo-fuzz" ]; then
    echo "==> installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi
export PATH="$HOME/.cargo/bin:$PATH"

crashed=()
for t in "${targets[@]}"; do
    echo "==> fuzzing $t for ${secs}s"
    mkdir -p "proxy/fuzz/corpus/$t"
    if ! cargo fuzz run --fuzz-dir proxy/fuzz -s none "$t" \
        "proxy/fuzz/corpus/$t" "proxy/fuzz/seeds/$t" -- \
        -max_total_time="$secs" -rss_limit_mb=4096 -timeout=20 -print_final_stats=1; then
        crashed+=("$t")
    fi
done
if [ ${#crashed[@]} -gt 0 ]; then
    echo "fuzz targets that crashed: ${crashed[*]} (inputs in proxy/fuzz/artifacts/)" >&2
    exit 1
fi
