#!/usr/bin/env bash
# Builds and installs ckpt (scripts/install.sh), starts a small counting
# program, checkpoints it into an image, shows what the image holds,
# restarts it from the image and shows that it carries on counting with the
# same pid. Then a C program checkpoints itself through libckpt, "crashes",
# and restarted from its image finishes with the right result. Run as root.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
    echo "demo: ckpt needs root (ptrace, clone3 with a chosen pid); run: sudo $0" >&2
    exit 1
fi
# ckpt, libckpt.so/.a, ckpt.h and ckpt.pc under /usr/local.
scripts/install.sh /usr/local
cargo build --release --example counter
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
# One snapshot of the file: the counter keeps appending meanwhile.
count=$(cat "$dir/count")
echo "demo: it went on from $last to ${count##*$'\n'}"
if [ "$(seq 1 "${count##*$'\n'}")" = "$count" ]; then
    echo "demo: every number is there once, in order: no step lost or repeated"
else
    echo "demo: FAILED: the count has gaps or repeats" >&2
    exit 1
fi

# Self-checkpoint through the C interface (examples/c/selfloop.c).
if command -v gcc >/dev/null; then
    flags=$(pkg-config --cflags --libs ckpt 2>/dev/null || echo "-I/usr/local/include -L/usr/local/lib -lckpt")
    # shellcheck disable=SC2086
    gcc -O2 examples/c/selfloop.c $flags -Wl,-rpath,/usr/local/lib -o "$dir/selfloop"
    want=$("$dir/selfloop" --no-checkpoint)
    # Its output is appended to a file, which the restarted process writes on.
    "$dir/selfloop" "$dir/selfloop.img" --crash-at 7500000 </dev/null >>"$dir/selfloop.out" || true
    echo "demo: selfloop checkpointed itself every 2000000 steps and crashed: $(tr '\n' ';' <"$dir/selfloop.out")"
    ckpt restart "$dir/selfloop.img" </dev/null
    got=$(tail -n1 "$dir/selfloop.out")
    if [ "$got" = "$want" ]; then
        echo "demo: restarted from its last checkpoint, it finished with the uninterrupted $want"
    else
        echo "demo: FAILED: selfloop restarted gave '$got', want '$want'" >&2
        exit 1
    fi
else
    echo "demo: gcc missing, skipping the self-checkpoint part"
fi
