#!/usr/bin/env bash
# Checks that every Rust source file of the repository (the workspace, the
# examples, the fuzz targets; build output in `target/` directories left
# out) starts with a `//!` line saying what the file is for (STYLE.md,
# ARCHITECTURE.md). Lists the files that do not and fails; scripts/test.sh
# runs it.
#   bash scripts/check-headers.sh [DIR]     (default: the repository root)
set -euo pipefail
root=${1:-"$(dirname "$0")/.."}
cd "$root"

missing=()
checked=0
while IFS= read -r -d '' file; do
  checked=$((checked + 1))
  IFS= read -r first <"$file" || true
  case $first in
    '//!'*) ;;
    *) missing+=("${file#./}") ;;
  esac
done < <(find . \( -name target -o -name .git \) -prune -o -type f -name '*.rs' -print0 | sort -z)

if [ "$checked" -eq 0 ]; then
  echo "check-headers: no .rs file found under $(pwd)" >&2
  exit 1
fi
if [ ${#missing[@]} -gt 0 ]; then
  echo "check-headers: ${#missing[@]} of $checked Rust files do not start with a //! header:" >&2
  printf '  %s\n' "${missing[@]}" >&2
  exit 1
fi
echo "check-headers: all $checked Rust files start with a //! header"
