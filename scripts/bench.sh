#!/usr/bin/env bash
# Benchmark: ckpt's checkpoint and restart times, side by side with CRIU's
# when a criu binary is found (CRIU=path, else `criu` on PATH), on the same
# workloads in the same run, with this machine's limits for bulk memory.
#
#   scripts/bench.sh            everything (a few minutes; needs root)
#   scripts/bench.sh quick      the small cases only
#   scripts/bench.sh objects    the per-object cases only
#   scripts/bench.sh bulk       the bulk memory cases only
#
# BENCH_RUNS=N (default 1) runs each bulk and per-object case N times and
# prints the median of each column, which steadies the figures on a noisy
# VM. A bulk case runs in rounds: the machine's limits once, then each
# tool's dump and restart; the limits are the median of the rounds too,
# like what they are compared with (this VM's memory speed drifts by
# half within minutes, so a best of three of the limits alone is a
# lucky draw next to a median of the dumps);
# BENCH_CASES="vmas:10000 tree:64" picks the per-object cases.
#
# Images go to a tmpfs (BENCH_DIR, default /dev/shm/ckpt-bench). Each
# restored workload verifies its state on SIGTERM (PASS/FAIL column).
# Figures are noisy on a shared VM: compare ratios in one run.
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
quick=${1:-}
dir=${BENCH_DIR:-/dev/shm/ckpt-bench}
ckpt=${CKPT:-$here/target/release/ckpt}
criu=${CRIU:-$(command -v criu || true)}
[ "$(id -u)" = 0 ] || { echo "bench.sh: needs root (ptrace, pids)" >&2; exit 1; }
[ -x "$ckpt" ] || (cd "$here" && cargo build --release -q)
if [ -n "$criu" ] && ! "$criu" --version >/dev/null 2>&1; then
    echo "bench.sh: $criu does not run; CRIU columns left out" >&2
    criu=
fi
mkdir -p "$dir"
bw=$dir/bw
gcc -O2 -pthread -o "$bw" "$here/scripts/bench/bw.c"

now() { date +%s.%N; }
secs() { echo "$2 - $1" | bc; }

# Waits until every pid given is gone (reaped), at most 30 s: a killed
# tree's children are reaped by pid 1, slowly here, which is no tool's work.
wait_gone() {
    for p in "$@"; do
        for _ in $(seq 1 600); do
            [ -e "/proc/$p" ] || continue 2
            sleep 0.05
        done
        echo "bench.sh: pid $p still there" >&2
        return 1
    done
}

# Starts `bw ARGS` and waits for its "ready"; sets $pid and $out.
start() {
    out=$dir/out
    rm -f "$out"
    setsid "$bw" "$@" </dev/null >"$out" 2>&1 &
    pid=$!
    for _ in $(seq 1 1200); do
        grep -q ready "$out" 2>/dev/null && return 0
        sleep 0.05
    done
    echo "bench.sh: bw $* never got ready" >&2
    exit 1
}

# This VM's memory is slow to use again once it has been idle, as if
# the host backed freed guest pages lazily (a 1 GiB tmpfs write ran at
# 0.53 GB/s the first time, 1.70 right after, 1.40-1.57 after 8 idle
# seconds; a 1 GiB dump took 0.74-0.89 s right after 3 GiB were written
# and freed, 0.98-2.9 s after 8 idle seconds). The limits are measured
# on warm pages (each writes its file twice); so each dump and restart of
# the bulk cases (either tool) runs right after warm_mib MiB of tmpfs
# were written and freed.
warm_mib=0
warm() {
    [ "$warm_mib" -gt 0 ] || return 0
    head -c "${warm_mib}M" /dev/zero >"$dir/warm"
    rm -f "$dir/warm"
}

# The pids of the workload's session (its tree), to wait for after a kill.
tree() { pgrep -s "$pid" | tr '\n' ' '; }

# After a restart: SIGTERM the root, which checks its state; prints PASS/FAIL.
verdict() {
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do
        grep -qE "PASS|FAIL" "$out" 2>/dev/null && break
        sleep 0.05
    done
    pkill -KILL -s "$pid" 2>/dev/null || true
    if grep -q PASS "$out"; then echo PASS; else echo FAIL; fi
    wait_gone "$pid" || true
}

# Runs "$@" $1 times (the command after the count) and prints the median
# of each numeric column; a verdict column is PASS only if every run passed.
median() {
    local n=$1
    shift
    # (bash reports each killed workload when the loop runs in a subshell)
    for _ in $(seq 1 "$n"); do "$@"; done 2> >(grep -v ' Killed ' >&2) | python3 -c '
import sys, statistics
rows = [l.split() for l in sys.stdin if l.strip()]
out = []
for col in zip(*rows):
    try:
        m = statistics.median(float(x) for x in col)
        out.append("%d" % m if m == int(m) and "." not in "".join(col) else "%.4f" % m)
    except ValueError:
        bad = [x for x in col if x != "PASS"]
        out.append(bad[0] if bad else "PASS")
print(" ".join(out))'
}
runs=${BENCH_RUNS:-1}

# Extra `ckpt checkpoint` arguments of run_ckpt and run_stream.
ck_extra=()

# A failed ckpt step: the row says so (under `set -e` it would end the
# loop of runs and leave the failure out of the medians), the tree goes.
failed() {
    echo "- - - $1-failed"
    pkill -KILL -s "$pid" 2>/dev/null || true
    wait_gone "$pid" || true
    rm -f "$dir/img" "$dir/log"
}

# One tool on one workload: prints "dump restore size verdict".
run_ckpt() {
    start "$@"
    warm
    rm -f "$dir/img"
    local t0 t1 t2 pids
    pids=$(tree)
    t0=$(now)
    "$ckpt" checkpoint "$pid" -o "$dir/img" "${ck_extra[@]}" || { failed dump; return 0; }
    t1=$(now)
    wait_gone $pids
    warm
    local t1b
    t1b=$(now)
    "$ckpt" restart -d "$dir/img" >/dev/null || { failed restart; return 0; }
    t2=$(now)
    local size
    size=$(stat -c %s "$dir/img")
    echo "$(secs "$t0" "$t1") $(secs "$t1b" "$t2") $size $(verdict)"
    rm -f "$dir/img"
}

run_pipe() {
    start "$@"
    warm
    local t0 t1 pids
    pids=$(tree)
    t0=$(now)
    "$ckpt" checkpoint "$pid" -o - | cat >"$dir/img" || { failed dump; return 0; }
    t1=$(now)
    wait_gone $pids
    warm
    local t1b t2
    t1b=$(now)
    "$ckpt" restart -d - <"$dir/img" >/dev/null || { failed restart; return 0; }
    t2=$(now)
    echo "$(secs "$t0" "$t1") $(secs "$t1b" "$t2") $(stat -c %s "$dir/img") $(verdict)"
    rm -f "$dir/img"
}

# Checkpoint to a file, then restart from a stream of it (cat | restart -):
# prints "dump restore size verdict held-KiB".
run_stream() {
    start "$@"
    warm
    rm -f "$dir/img" "$dir/log"
    local t0 t1 t1b t2 pids
    pids=$(tree)
    t0=$(now)
    "$ckpt" checkpoint "$pid" -o "$dir/img" "${ck_extra[@]}" || { failed dump; return 0; }
    t1=$(now)
    wait_gone $pids
    warm
    t1b=$(now)
    cat "$dir/img" | "$ckpt" restart -d --log "$dir/log" - >/dev/null || { failed restart; return 0; }
    t2=$(now)
    local held
    held=$(grep -o 'at most [0-9]* KiB' "$dir/log" | grep -o '[0-9]*' || echo -)
    echo "$(secs "$t0" "$t1") $(secs "$t1b" "$t2") $(stat -c %s "$dir/img") $(verdict) $held"
    rm -f "$dir/img" "$dir/log"
}

run_criu() {
    start "$@"
    warm
    rm -rf "$dir/criu" && mkdir -p "$dir/criu"
    local t0 t1 t1b t2 pids
    pids=$(tree)
    t0=$(now)
    "$criu" dump --no-default-config -t "$pid" -D "$dir/criu" -o dump.log >/dev/null 2>&1 ||
        { echo "- - - dump-failed"; pkill -KILL -s "$pid" 2>/dev/null || true; return; }
    t1=$(now)
    wait_gone $pids
    warm
    t1b=$(now)
    "$criu" restore --no-default-config -d -D "$dir/criu" -o restore.log >/dev/null 2>&1 ||
        { printf '%.3f - - restore-failed\n' "$(secs "$t0" "$t1")"; return; }
    t2=$(now)
    printf '%.3f %.3f %s %s\n' "$(secs "$t0" "$t1")" "$(secs "$t1b" "$t2")" \
        "$(du -sb "$dir/criu" | cut -f1)" "$(verdict)"
    rm -rf "$dir/criu"
}

printf '# ckpt benchmark, %s, %s, %s cores, %s\n' "$(date -u +%Y-%m-%d)" "$(uname -r)" \
    "$(nproc)" "$(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo)"
[ -n "$criu" ] && printf '# CRIU: %s (%s)\n' "$criu" "$("$criu" --version | head -1)"

if [ "$quick" != objects ]; then
sizes="64 1024 4096"
[ "$quick" = quick ] && sizes="64"
echo
echo "## Bulk memory (GB/s; limits: 4 MiB writes to tmpfs of memory out of the CPU caches,"
echo "## reads into fresh memory; w-hot: the write of memory just filled, partly cached)"
printf '%-10s %8s %8s %8s %8s | %8s %8s %6s %6s | %8s %8s\n' MiB write w-hot read memcpy \
    dump restore d/wr r/rd "criu-d" "criu-r"
# One round of a bulk case of $1 MiB: "write w-hot read memcpy" (the
# limits, one run), then ckpt's "dump restore size verdict", then CRIU's.
bulk_round() {
    local lim
    lim=$("$bw" limits "$1" "$dir/limits" 1)
    set -- "$1" $lim
    echo "$3 $9 $5 $7 $(run_ckpt mem "$1") $(if [ -n "$criu" ]; then run_criu mem "$1"; else echo - - - -; fi)"
}
for m in $sizes; do
    warm_mib=$((m * 3 / 2))
    read -r w h r c d rs size v a b _ _ < <(median "$runs" bulk_round "$m")
    cd=- cr=-
    if [ -n "$criu" ]; then
        [ "$a" != - ] && cd=$(echo "scale=2; $m * 1.048576 / 1000 / $a" | bc)
        [ "$b" != - ] && cr=$(echo "scale=2; $m * 1.048576 / 1000 / $b" | bc)
    fi
    dg=$(echo "scale=2; $m * 1.048576 / 1000 / $d" | bc)
    rg=$(echo "scale=2; $m * 1.048576 / 1000 / $rs" | bc)
    printf '%-10s %8.2f %8.2f %8.2f %8.2f | %8s %8s %6s %6s | %8s %8s  %s\n' "$m" "$w" "$h" "$r" "$c" "$dg" "$rg" \
        "$(echo "scale=2; $dg / $w" | bc)" "$(echo "scale=2; $rg / $r" | bc)" "$cd" "$cr" "$v"
done
[ "$quick" = bulk ] && { rm -rf "$dir"; exit 0; }
echo
echo "## Through a pipe (checkpoint -o - | cat > file; restart - < file)"
for m in $sizes; do
    warm_mib=$((m * 3 / 2))
    read -r d rs size v < <(run_pipe mem "$m")
    printf '%-10s dump %6.3f s  restore %6.3f s  %s\n' "$m MiB" "$d" "$rs" "$v"
done
echo
echo "## Streamed restore (cat file | restart -: pages restored as they arrive)"
for m in $sizes; do
    warm_mib=$((m * 3 / 2))
    read -r _ rs size v held < <(run_stream mem "$m")
    printf '%-10s restore %6.3f s  %6s GB/s  at most %s KiB of the image held  %s\n' "$m MiB" \
        "$rs" "$(echo "scale=2; $m * 1.048576 / 1000 / $rs" | bc)" "$held" "$v"
done
echo
m=1024
[ "$quick" = quick ] && m=64
warm_mib=$((m * 3 / 2))
echo "## Compression ($m MiB; mem is incompressible, half has half of each page zero)"
printf '%-6s %-5s %8s %8s %8s %12s %7s | %s\n' data algo dump "GB/s" restore image ratio verdict
for w in mem half; do
    for a in none lz4 zstd; do
        ck_extra=()
        [ "$a" = none ] || ck_extra=(--compress "$a")
        read -r d rs size v < <(run_ckpt "$w" "$m")
        printf '%-6s %-5s %8.3f %8s %8.3f %12s %7s | %s\n' "$w" "$a" "$d" \
            "$(echo "scale=2; $m * 1.048576 / 1000 / $d" | bc)" "$rs" "$size" \
            "$(echo "scale=2; $m * 1048576 / $size" | bc)" "$v"
    done
done
ck_extra=()

fi

warm_mib=0
echo
echo "## Objects (seconds; per object in µs; image bytes)"
printf '%-16s %8s %8s %9s %10s | %8s %8s %10s | %s\n' workload dump restore "µs/obj d" image \
    criu-d criu-r criu-img verdict
cases="vmas:1000 vmas:10000 threads:12 threads:128 tree:8 tree:64 fds:1000 fds:10000 sparse:64"
[ "$quick" = quick ] && cases="vmas:1000 threads:12 tree:8 fds:1000"
[ -n "${BENCH_CASES:-}" ] && cases=$BENCH_CASES
for c in $cases; do
    w=${c%%:*} n=${c##*:}
    read -r d rs size v < <(median "$runs" run_ckpt "$w" "$n")
    cd=- cr=- cs=-
    if [ -n "$criu" ]; then
        read -r cd cr cs cv < <(median "$runs" run_criu "$w" "$n")
        [ "$cv" = PASS ] || cs="$cs($cv)"
    fi
    per=$(echo "scale=1; $d * 1000000 / $n" | bc)
    printf '%-16s %8.3f %8.3f %9s %10s | %8s %8s %10s | %s\n' "$w $n" "$d" "$rs" "$per" "$size" \
        "$cd" "$cr" "$cs" "$v"
done
rm -rf "$dir"
