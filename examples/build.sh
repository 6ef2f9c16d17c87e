#!/usr/bin/env bash
# Builds the example functions as static Linux x86-64 binaries and puts them
# where their cpub.toml / Containerfile expect them:
#   examples/hello/bin/hello   examples/echo/bin/echo   examples/chatty/bin/chatty
#   examples/wsecho/bin/wsecho
# Usage: examples/build.sh   (from anywhere; CARGO_TARGET_DIR is honoured)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
target=x86_64-unknown-linux-gnu
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-/var/tmp/containerpub-examples-target}"
export RUSTFLAGS="-C target-feature=+crt-static"

cargo build --release --manifest-path "$here/Cargo.toml" --target "$target" --bins

status=0
for name in hello echo chatty wsecho; do
    src="$CARGO_TARGET_DIR/$target/release/$name"
    dest="$here/$name/bin/$name"
    mkdir -p "$(dirname "$dest")"
    install -m 0755 "$src" "$dest"
    # A static executable has no program interpreter (PT_INTERP).
    if readelf -lW "$dest" | grep -q 'INTERP'; then
        echo "error: $dest is dynamically linked" >&2
        status=1
    else
        echo "$dest ($(stat -c %s "$dest") bytes, static)"
    fi
done
exit "$status"
