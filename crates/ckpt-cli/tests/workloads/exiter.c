/*
 * exiter: waits for one signal, then exits with a chosen code.
 *
 *   argv[3]  the signal expected (number; SIGTERM, SIGINT, SIGHUP or SIGQUIT)
 *   argv[4]  the exit code to use after writing PASS
 *
 * SIGTERM, SIGINT, SIGHUP and SIGQUIT all get a handler that records which
 * arrived; they are blocked except while the process sleeps in sigsuspend.
 * Verification: exactly the expected signal arrived (and no other of the
 * four), the pid is unchanged, the open fds are the same. On PASS the process
 * exits with argv[4]; on FAIL with 1. Used to check that `ckpt restart`
 * (without --detach) forwards signals and passes the exit status on.
 */
#include "wl.h"

static volatile sig_atomic_t got[NSIG];

static void on_signal(int sig)
{
    got[sig]++;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "exiter");
    if (argc < 5)
        wl_die("usage: exiter FIFO RESULT SIGNAL EXIT_CODE");
    int expect = atoi(argv[3]), code = atoi(argv[4]);
    const int sigs[] = {SIGTERM, SIGINT, SIGHUP, SIGQUIT};

    sigset_t block, old;
    sigemptyset(&block);
    for (int i = 0; i < 4; i++)
        sigaddset(&block, sigs[i]);
    if (sigprocmask(SIG_BLOCK, &block, &old) != 0)
        wl_die("sigprocmask");
    for (int i = 0; i < 4; i++) {
        struct sigaction sa;
        memset(&sa, 0, sizeof(sa));
        sa.sa_handler = on_signal;
        sigemptyset(&sa.sa_mask);
        if (sigaction(sigs[i], &sa, NULL) != 0)
            wl_die("sigaction(%d)", sigs[i]);
    }

    wl_ready();
    int total = 0;
    while (total == 0) {
        sigsuspend(&old);
        for (int i = 0; i < 4; i++)
            total += got[sigs[i]];
    }

    wl_verify_common();
    for (int i = 0; i < 4; i++) {
        int s = sigs[i];
        if (s == expect)
            WL_CHECK(got[s] == 1, "signal %d (expected) arrived %d times", s, (int)got[s]);
        else
            WL_CHECK(got[s] == 0, "signal %d arrived %d times, expected only signal %d", s,
                     (int)got[s], expect);
    }
    if (wl_failures == 0) {
        int fd = open(wl_result, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, "PASS\n", 5) != 5)
            wl_die("writing %s", wl_result);
        close(fd);
        fprintf(stderr, "exiter: PASS (signal %d), exiting with %d\n", expect, code);
        exit(code);
    }
    wl_finish();
}
