#!/usr/bin/env bash
# Runs the whole test suite. Checkpoint/restart tests need root (they skip
# loudly otherwise); CI runs as root and fails if any test was skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
trap 'rm -f "$out"' EXIT
cargo test --workspace 2>&1 | tee "$out"
if [ "$(id -u)" = 0 ] && grep -q '^SKIP:' "$out"; then
    echo "error: tests were skipped although running as root:" >&2
    grep '^SKIP:' "$out" >&2
    exit 1
fi
