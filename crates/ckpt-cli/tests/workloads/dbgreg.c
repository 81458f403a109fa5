/*
 * dbgreg: a hardware watchpoint set by a debugger survives the checkpoint.
 *
 * The workload writes the address of `watched` (8-byte aligned, 8 bytes, never
 * written before verification) as "0x..." to RESULT.addr, installs a SIGTRAP
 * handler and sleeps in sigsuspend. The harness sets dr0 = &watched and dr7 =
 * "local enable 0, break on write, 8 bytes" with ptrace and detaches.
 *
 * argv[3] == "expect-trap": verification (on SIGTERM) writes `watched` once;
 * the watchpoint must fire: exactly one SIGTRAP with si_code TRAP_HWBKPT, the
 * write itself must have happened. Any other argv[3]: no trap may fire.
 */
#include "wl.h"

#ifndef TRAP_HWBKPT
#define TRAP_HWBKPT 4
#endif

static volatile uint64_t watched __attribute__((aligned(64)));
static volatile sig_atomic_t traps, trap_code;

static void on_trap(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    traps++;
    trap_code = si->si_code;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "dbgreg");
    int expect_trap = argc > 3 && strcmp(argv[3], "expect-trap") == 0;

    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = on_trap;
    sa.sa_flags = SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    if (sigaction(SIGTRAP, &sa, NULL) != 0)
        wl_die("sigaction(SIGTRAP)");

    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &term, &old) != 0)
        wl_die("sigprocmask");

    char path[4096];
    snprintf(path, sizeof(path), "%s.addr", wl_result);
    FILE *f = fopen(path, "we");
    if (!f || fprintf(f, "%p\n", (void *)&watched) < 0 || fclose(f) != 0)
        wl_die("writing %s", path);

    wl_ready();
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    WL_CHECK(traps == 0, "%d SIGTRAPs before the write", (int)traps);
    watched = 0x5ca1ab1e;
    WL_CHECK(watched == 0x5ca1ab1e, "the write to the watched variable was lost");
    if (expect_trap) {
        WL_CHECK(traps == 1, "writing the watched variable raised %d SIGTRAPs, expected 1 "
                             "(debug registers lost?)",
                 (int)traps);
        WL_CHECK(traps == 0 || trap_code == TRAP_HWBKPT, "SIGTRAP si_code %d, expected %d",
                 (int)trap_code, TRAP_HWBKPT);
    } else {
        WL_CHECK(traps == 0, "%d SIGTRAPs without a watchpoint", (int)traps);
    }
    wl_finish();
}
