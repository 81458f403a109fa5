/*
 * orphans: ids whose leader is gone.
 *
 *   R  session leader and child subreaper (the root).
 *   B  child of R in process group A, whose leader A exited and was reaped:
 *      the group lives on with a dead leader.
 *   M  in session L (pgid L), whose leader L exited after forking M: M was
 *      reparented to R, the subreaper.
 *
 * Writes "R B M A L" to RESULT.pids and is ready. On SIGTERM, R checks that
 * B and M have the same sid/pgid as before and are still its children
 * (waitpid reaps them after R kills them).
 */
#include "wl.h"

#include <sys/prctl.h>
#include <sys/wait.h>

static void pause_forever(void)
{
    for (;;)
        pause();
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "orphans");
    pid_t r = getpid();
    if (getsid(0) != r && setsid() < 0)
        wl_die("setsid");
    if (prctl(PR_SET_CHILD_SUBREAPER, 1) != 0)
        wl_die("PR_SET_CHILD_SUBREAPER");
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &term, &old) != 0)
        wl_die("sigprocmask");

    /* A leads group A; B joins it; A exits and is reaped. */
    int go[2];
    if (pipe2(go, O_CLOEXEC) != 0)
        wl_die("pipe2");
    pid_t a = fork();
    if (a < 0)
        wl_die("fork(A)");
    if (a == 0) {
        char c;
        setpgid(0, 0);
        close(go[1]);
        if (read(go[0], &c, 1) < 0)
            _exit(1);
        _exit(0);
    }
    setpgid(a, a);
    pid_t b = fork();
    if (b < 0)
        wl_die("fork(B)");
    if (b == 0) {
        close(go[0]);
        close(go[1]);
        setpgid(0, a);
        pause_forever();
    }
    setpgid(b, a);
    while (getpgid(b) != a)
        wl_sleep_ns(1000000);
    close(go[0]);
    close(go[1]); /* A reads EOF and exits */
    if (waitpid(a, NULL, 0) != a)
        wl_die("waitpid(A)");

    /* L opens session L, forks M, exits; M comes to us. */
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        wl_die("pipe2");
    pid_t l = fork();
    if (l < 0)
        wl_die("fork(L)");
    if (l == 0) {
        setsid();
        pid_t m = fork();
        if (m == 0) {
            close(p[0]);
            close(p[1]);
            pause_forever();
        }
        if (write(p[1], &m, sizeof m) != sizeof m)
            _exit(1);
        _exit(0);
    }
    close(p[1]);
    pid_t m;
    if (read(p[0], &m, sizeof m) != sizeof m)
        wl_die("read M's pid");
    close(p[0]);
    if (waitpid(l, NULL, 0) != l)
        wl_die("waitpid(L)");
    double deadline = wl_monotonic() + 10;
    char status[64];
    for (;;) {
        snprintf(status, sizeof(status), "/proc/%d/stat", (int)m);
        FILE *f = fopen(status, "re");
        int ppid = -1;
        if (f) {
            char buf[512];
            if (fgets(buf, sizeof buf, f)) {
                char *e = strrchr(buf, ')');
                if (e)
                    sscanf(e + 2, "%*c %d", &ppid);
            }
            fclose(f);
        }
        if (ppid == r)
            break;
        if (wl_monotonic() > deadline)
            wl_die("M was not reparented to R");
        wl_sleep_ns(1000000);
    }
    if (getsid(b) != r || getpgid(b) != a || getsid(m) != l || getpgid(m) != l)
        wl_die("ids not as designed");

    char path[4096];
    snprintf(path, sizeof(path), "%s.pids", wl_result);
    FILE *f = fopen(path, "we");
    if (!f)
        wl_die("fopen(%s)", path);
    fprintf(f, "%d %d %d %d %d\n", (int)r, (int)b, (int)m, (int)a, (int)l);
    if (fclose(f) != 0)
        wl_die("fclose(%s)", path);

    wl_ready();
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    WL_CHECK(getsid(b) == r && getpgid(b) == a, "B (%d): sid %d pgid %d, were %d %d", (int)b,
             (int)getsid(b), (int)getpgid(b), (int)r, (int)a);
    WL_CHECK(getsid(m) == l && getpgid(m) == l, "M (%d): sid %d pgid %d, were %d %d", (int)m,
             (int)getsid(m), (int)getpgid(m), (int)l, (int)l);
    WL_CHECK(kill(a, 0) != 0 && kill(l, 0) != 0, "the dead leaders %d/%d exist again", (int)a,
             (int)l);
    kill(b, SIGKILL);
    kill(m, SIGKILL);
    WL_CHECK(waitpid(b, NULL, 0) == b, "B (%d) is not R's child", (int)b);
    WL_CHECK(waitpid(m, NULL, 0) == m, "M (%d) is not R's child", (int)m);
    wl_finish();
}
