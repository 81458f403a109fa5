#!/usr/bin/env bash
# Builds ckpt, starts a small counting program, checkpoints it into an
# image, shows what the image holds, restarts it from the image and shows
# that it carries on counting with the same pid. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "demo: ckpt needs root (ptrace, clone3 with a chosen pid); run: sudo $0" >&2
    exit 1
fi
cargo build --release --bin ckpt --example counter
install -m 0755 target/release/ckpt /usr/local/bin/ckpt
echo "installed /usr/local/bin/ckpt"
ckpt check || true

dir=$(mktemp -d /tmp/ckpt-demo.XXXXXX)
pid=""
cleanup() { [ -n "$pid" ] && kill -9 "$pid" 2>/dev/null; rm -rf "$dir"; }
trap cleanup EXIT

# A counter that appends one line per 0.1 s.
# It gets only stdin/stdout/stderr: fds inherited from whatever started
# this script (pipes, sockets) are closed, as ckpt cannot save those yet.
(
    for p in /proc/$BASHPID/fd/*; do
        fd=${p##*/}
        [ "$fd" -gt 2 ] && eval "exec $fd>&-" 2>/dev/null
    done
    exec target/release/examples/counter "$dir/count"
) </dev/null >/dev/null 2>&1 &
pid=$!
disown
while [ ! -s "$dir/count" ] || [ "$(wc -l < "$dir/count")" -lt 10 ]; do sleep 0.1; done
echo "demo: pid $pid has counted to $(tail -n1 "$dir/count")"

ckpt checkpoint "$pid" -o "$dir/demo.img"
echo "demo: checkpointed into $dir/demo.img ($(stat -c %s "$dir/demo.img") bytes); pid $pid is $([ -d /proc/$pid ] && echo "STILL RUNNING" || echo gone)"
ckpt inspect "$dir/demo.img" | tail -n 1
last=$(tail -n1 "$dir/count")

newpid=$(ckpt restart --detach "$dir/demo.img")
echo "demo: restarted as pid $newpid"
sleep 1
echo "demo: it went on from $last to $(tail -n1 "$dir/count")"
if seq 1 "$(tail -n1 "$dir/count")" | cmp -s - "$dir/count"; then
    echo "demo: every number is there once, in order: no step lost or repeated"
else
    echo "demo: FAILED: the count has gaps or repeats" >&2
    exit 1
fi
