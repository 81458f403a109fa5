/*
 * forker: a parent forking short-lived children in a tight loop.
 *
 * Child number n (n = 1, 2, ...) exits with status n % 200 at once, except
 * every fourth, which first sleeps 2 ms. The parent keeps up to MAX_OUT
 * children outstanding (reaping with WNOHANG, or blocking in waitpid when the
 * table is full), so a checkpoint catches running children, sleeping ones,
 * zombies and a parent in fork() or waitpid().
 *
 * Ready after WARMUP forks. Verification (SIGTERM): forking goes on after the
 * restore (at least 20 more forks, within 5 s); then the parent stops, reaps
 * every outstanding child within 10 s, and every child ever reaped exited with
 * its own n % 200 and was one of ours; nothing else is left (ECHILD).
 */
#include "wl.h"

#include <sys/wait.h>

#define MAX_OUT 8
#define WARMUP 2000

static struct {
    pid_t pid;
    uint64_t n;
} out[MAX_OUT];
static int nout;
static uint64_t forks, reaped, wrong_status, strangers;

static void reaped_one(pid_t pid, int st)
{
    for (int i = 0; i < nout; i++) {
        if (out[i].pid != pid)
            continue;
        int want = (int)(out[i].n % 200);
        if (!WIFEXITED(st) || WEXITSTATUS(st) != want) {
            if (wrong_status++ == 0)
                wl_fail("child %llu (pid %d) ended with status 0x%x, expected exit %d",
                        (unsigned long long)out[i].n, (int)pid, st, want);
        }
        out[i] = out[--nout];
        reaped++;
        return;
    }
    if (strangers++ == 0)
        wl_fail("reaped pid %d (status 0x%x), which is not an outstanding child", (int)pid, st);
}

static void fork_one(void)
{
    uint64_t n = forks + 1;
    pid_t pid = fork();
    if (pid < 0)
        wl_die("fork");
    if (pid == 0) {
        if (n % 4 == 0)
            wl_sleep_ns(2000000);
        _exit((int)(n % 200));
    }
    forks = n;
    out[nout].pid = pid;
    out[nout].n = n;
    nout++;
}

/* One step: fork if there is room, then reap what is ready (blocking if full). */
static void step(void)
{
    if (nout < MAX_OUT)
        fork_one();
    int st;
    pid_t pid;
    while ((pid = waitpid(-1, &st, nout == MAX_OUT ? 0 : WNOHANG)) > 0) {
        reaped_one(pid, st);
        if (nout < MAX_OUT)
            break;
    }
    if (pid < 0 && errno != EINTR && errno != ECHILD)
        wl_die("waitpid");
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "forker");
    while (forks < WARMUP)
        step();
    if (wl_failures)
        wl_die("failures before ready: %s", wl_first_failure);
    uint64_t at_ready = forks;
    wl_ready();
    while (!wl_term)
        step();

    wl_verify_common();
    uint64_t at_term = forks;
    fprintf(stderr, "forker: %llu forks at ready, %llu at SIGTERM, %d outstanding\n",
            (unsigned long long)at_ready, (unsigned long long)at_term, nout);
    double deadline = wl_monotonic() + 5;
    while (forks < at_term + 20 && wl_monotonic() < deadline)
        step();
    WL_CHECK(forks >= at_term + 20, "only %llu forks in 5 s after the restore",
             (unsigned long long)(forks - at_term));

    deadline = wl_monotonic() + 10;
    while (nout > 0 && wl_monotonic() < deadline) {
        int st;
        pid_t pid = waitpid(-1, &st, WNOHANG);
        if (pid > 0)
            reaped_one(pid, st);
        else if (pid == 0)
            wl_sleep_ns(1000000);
        else if (errno != EINTR)
            break;
    }
    WL_CHECK(nout == 0, "%d children never exited (first: pid %d, child %llu)", nout,
             nout ? (int)out[0].pid : 0, nout ? (unsigned long long)out[0].n : 0ULL);
    int st;
    pid_t left = waitpid(-1, &st, WNOHANG);
    WL_CHECK(left < 0 && errno == ECHILD, "waitpid(-1) still returns %d", (int)left);
    fprintf(stderr, "forker: %llu forks, %llu reaped, %llu wrong status, %llu strangers\n",
            (unsigned long long)forks, (unsigned long long)reaped,
            (unsigned long long)wrong_status, (unsigned long long)strangers);
    wl_finish();
}
