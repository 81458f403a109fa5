#!/usr/bin/env bash
# Measures checkpoint and restart of a process holding N MiB of (random,
# incompressible) memory, for a few sizes, and prints time and throughput.
# Usage (as root): scripts/bench.sh [MIB...]   default: 64 256 1024
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench: needs root" >&2; exit 1; }
cargo build --release -q --bin ckpt --example memhog
ckpt=target/release/ckpt
dir=$(mktemp -d /tmp/ckpt-bench.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT
now() { date +%s.%N; }
printf '%8s %10s %12s %12s %12s %12s\n' MiB image_MiB ckpt_s ckpt_MiB/s restart_s restart_MiB/s
for mib in "${@:-64 256 1024}"; do
    rm -f "$dir/ready" "$dir/img"
    (
        for p in /proc/$BASHPID/fd/*; do fd=${p##*/}; [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null; done
        exec target/release/examples/memhog "$mib" "$dir/ready"
    ) </dev/null >/dev/null 2>&1 &
    pid=$!
    disown
    while [ ! -e "$dir/ready" ]; do sleep 0.01; done
    sync; echo 3 > /proc/sys/vm/drop_caches 2>/dev/null || true
    t0=$(now); "$ckpt" checkpoint "$pid" -o "$dir/img"; t1=$(now)
    size=$(stat -c %s "$dir/img")
    t2=$(now); "$ckpt" restart --detach "$dir/img" >/dev/null; t3=$(now)
    kill -9 "$pid"; pid=""
    awk -v m="$mib" -v s="$size" -v a="$t0" -v b="$t1" -v c="$t2" -v d="$t3" 'BEGIN {
        printf "%8d %10.1f %12.3f %12.0f %12.3f %12.0f\n", m, s/1048576, b-a, m/(b-a), d-c, m/(d-c) }'
done
