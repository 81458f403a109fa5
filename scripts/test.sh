#!/usr/bin/env bash
# Runs the whole test suite and ends with a one-line summary.
# Checkpoint/restart tests need root. As root every test can run here, so a
# skip is a failure (CKPT_TEST_NO_SKIP=1 makes the skipping test fail); as
# another user the root tests skip loudly and are counted in the summary.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(mktemp)
skips=$(mktemp)
trap 'rm -f "$out" "$skips"' EXIT
export CKPT_TEST_SKIPS="$skips"
if [ "$(id -u)" = 0 ]; then
    export CKPT_TEST_NO_SKIP=1
fi
set +e
cargo test --workspace 2>&1 | tee "$out"
rc=${PIPESTATUS[0]}
set -e
sum() { grep -Eo "[0-9]+ $1" "$out" | awk '{s+=$1} END {print s+0}'; }
nskip=$(grep -c '^SKIP:' "$skips" || true)
if [ "$nskip" -gt 0 ]; then
    echo "skipped tests:"
    sed 's/^/  /' "$skips"
fi
status=ok
[ "$rc" = 0 ] || status=FAILED
echo "test.sh: $status: $(sum passed) passed, $(sum failed) failed, $(sum ignored) ignored, $nskip skipped"
exit "$rc"
