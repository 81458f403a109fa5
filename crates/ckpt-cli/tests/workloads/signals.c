/*
 * signals: dispositions, masks, pending signals, alternate stack, timer, rlimit.
 *
 *   SIGUSR1   handler with SA_SIGINFO|SA_ONSTACK|SA_RESTART and sa_mask {SIGALRM},
 *             on a sigaltstack: raised at verification, it must run on the
 *             alternate stack with SIGALRM blocked.
 *   SIGUSR2   blocked, one sigqueue()d instance with si_value 4242 pending at
 *             checkpoint time: after unblocking, delivered exactly once, with
 *             value 4242 and si_code SI_QUEUE.
 *   SIGRTMIN+1 blocked, three queued instances with values 1, 2, 3: after
 *             unblocking, all three delivered, in order.
 *   SIGALRM   ITIMER_REAL every 10 ms counts ticks: the interval is intact and
 *             ticks keep coming after the restore.
 *   SIGPIPE   ignored (SIG_IGN).
 *   SIGTRAP   ignored too (restore must not reset it, though it uses
 *             int3 stops of its own).
 *   SIGCHLD   SIG_DFL with SA_NOCLDSTOP (which acts under SIG_DFL).
 *   mask      SIGUSR2 and SIGRTMIN+1 still blocked (and nothing else) before
 *             verification unblocks them; both still pending.
 *   rlimit    RLIMIT_NOFILE soft limit 777, hard limit unchanged.
 * The main loop sleeps in nanosleep() with SIGALRM blocked (see there), so
 * the checkpoint finds it in a syscall with a SIGALRM pending.
 */
#include "wl.h"

#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/time.h>

#define ALT_SIZE (64 * 1024)
#define NOFILE_SOFT 777

static uint8_t *alt_base;

static volatile sig_atomic_t ticks;
static volatile int usr1_count, usr1_on_altstack, usr1_alrm_blocked;
static volatile int usr2_count, usr2_value, usr2_code;
static volatile int rt_count, rt_values[8], rt_codes[8];

static void on_alrm(int sig)
{
    (void)sig;
    ticks++;
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)si;
    (void)uc;
    volatile char local = 0;
    uintptr_t a = (uintptr_t)&local;
    usr1_on_altstack = a >= (uintptr_t)alt_base && a < (uintptr_t)alt_base + ALT_SIZE;
    sigset_t cur;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    usr1_alrm_blocked = sigismember(&cur, SIGALRM) == 1;
    usr1_count++;
}

static void on_usr2(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    usr2_value = si->si_value.sival_int;
    usr2_code = si->si_code;
    usr2_count++;
}

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    int i = rt_count;
    if (i < 8) {
        rt_values[i] = si->si_value.sival_int;
        rt_codes[i] = si->si_code;
    }
    rt_count = i + 1;
}

static void set_action(int sig, void (*h)(int, siginfo_t *, void *), int flags, int mask_sig)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = h;
    sa.sa_flags = SA_SIGINFO | flags;
    sigemptyset(&sa.sa_mask);
    if (mask_sig)
        sigaddset(&sa.sa_mask, mask_sig);
    if (sigaction(sig, &sa, NULL) != 0)
        wl_die("sigaction(%d)", sig);
}

static void queue(int sig, int value)
{
    union sigval v = {.sival_int = value};
    if (sigqueue(getpid(), sig, v) != 0)
        wl_die("sigqueue(%d, %d)", sig, value);
}

static int same_set(const sigset_t *a, const sigset_t *b)
{
    for (int s = 1; s < NSIG; s++)
        if (sigismember(a, s) != sigismember(b, s))
            return 0;
    return 1;
}

static void wait_ticks(int n, double max_seconds)
{
    int start = ticks;
    double t0 = wl_monotonic();
    while (ticks - start < n && wl_monotonic() - t0 < max_seconds)
        wl_sleep_ns(5 * 1000 * 1000);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "signals");
    const int rt = SIGRTMIN + 1;

    alt_base = mmap(NULL, ALT_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (alt_base == MAP_FAILED)
        wl_die("mmap altstack");
    stack_t ss = {.ss_sp = alt_base, .ss_size = ALT_SIZE, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        wl_die("sigaltstack");

    set_action(SIGUSR1, on_usr1, SA_ONSTACK | SA_RESTART, SIGALRM);
    set_action(SIGUSR2, on_usr2, 0, 0);
    set_action(rt, on_rt, 0, 0);
    struct sigaction ign;
    memset(&ign, 0, sizeof(ign));
    ign.sa_handler = SIG_IGN;
    if (sigaction(SIGPIPE, &ign, NULL) != 0 || sigaction(SIGTRAP, &ign, NULL) != 0)
        wl_die("sigaction(SIGPIPE/SIGTRAP)");
    struct sigaction chld;
    memset(&chld, 0, sizeof(chld));
    chld.sa_handler = SIG_DFL;
    chld.sa_flags = SA_NOCLDSTOP;
    if (sigaction(SIGCHLD, &chld, NULL) != 0)
        wl_die("sigaction(SIGCHLD)");
    struct sigaction alrm;
    memset(&alrm, 0, sizeof(alrm));
    alrm.sa_handler = on_alrm;
    sigemptyset(&alrm.sa_mask);
    if (sigaction(SIGALRM, &alrm, NULL) != 0)
        wl_die("sigaction(SIGALRM)");

    /* Control: SIGUSR1 works before the checkpoint too. */
    kill(getpid(), SIGUSR1);
    if (usr1_count != 1 || !usr1_on_altstack || !usr1_alrm_blocked)
        wl_die("SIGUSR1 handler misbehaves before ready: workload bug");
    usr1_count = 0;

    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, rt);
    if (sigprocmask(SIG_BLOCK, &block, NULL) != 0)
        wl_die("sigprocmask");
    sigset_t mask_at_ready;
    sigprocmask(SIG_BLOCK, NULL, &mask_at_ready);
    queue(SIGUSR2, 4242);
    queue(rt, 1);
    queue(rt, 2);
    queue(rt, 3);

    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        wl_die("getrlimit");
    rlim_t hard_at_ready = rl.rlim_max;
    rl.rlim_cur = NOFILE_SOFT;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        wl_die("setrlimit");

    struct itimerval it = {.it_interval = {0, 10000}, .it_value = {0, 10000}};
    if (setitimer(ITIMER_REAL, &it, NULL) != 0)
        wl_die("setitimer");
    wait_ticks(3, 5.0);
    if (ticks < 3)
        wl_die("timer does not tick");

    wl_ready();
    int ticks_at_ready = ticks;

    sigset_t alrm_set;
    sigemptyset(&alrm_set);
    sigaddset(&alrm_set, SIGALRM);
    while (!wl_term) {
        /* A critical section with SIGALRM blocked. The timer expires within
         * 10 ms and its SIGALRM then waits, pending: the kernel re-arms an
         * interval ITIMER_REAL only when that signal is delivered, so until
         * then getitimer() reports value 0, interval 10 ms. The harness waits
         * for this state before it checkpoints; a restore that takes "value 0"
         * to mean "disarmed" loses the timer. */
        sigprocmask(SIG_BLOCK, &alrm_set, NULL);
        wl_sleep_ns(500 * 1000 * 1000);
        sigprocmask(SIG_UNBLOCK, &alrm_set, NULL);
    }

    wl_verify_common();

    /* Mask and pending set, before anything is unblocked. */
    sigset_t cur, pending;
    sigprocmask(SIG_BLOCK, NULL, &cur);
    WL_CHECK(same_set(&cur, &mask_at_ready), "signal mask changed (SIGUSR2 %s, SIGRTMIN+1 %s)",
             sigismember(&cur, SIGUSR2) ? "blocked" : "unblocked",
             sigismember(&cur, rt) ? "blocked" : "unblocked");
    sigpending(&pending);
    WL_CHECK(sigismember(&pending, SIGUSR2) == 1, "SIGUSR2 no longer pending");
    WL_CHECK(sigismember(&pending, rt) == 1, "SIGRTMIN+1 no longer pending");
    WL_CHECK(usr2_count == 0 && rt_count == 0, "blocked signals were delivered (%d, %d)",
             usr2_count, rt_count);

    /* Dispositions. */
    struct sigaction sa;
    sigaction(SIGUSR1, NULL, &sa);
    WL_CHECK(sa.sa_sigaction == on_usr1, "SIGUSR1 handler changed");
    WL_CHECK((sa.sa_flags & (SA_SIGINFO | SA_ONSTACK | SA_RESTART)) ==
                 (SA_SIGINFO | SA_ONSTACK | SA_RESTART),
             "SIGUSR1 flags 0x%x lack SA_SIGINFO|SA_ONSTACK|SA_RESTART", sa.sa_flags);
    WL_CHECK(sigismember(&sa.sa_mask, SIGALRM) == 1, "SIGUSR1 sa_mask lost SIGALRM");
    sigaction(SIGUSR2, NULL, &sa);
    WL_CHECK(sa.sa_sigaction == on_usr2 && (sa.sa_flags & SA_SIGINFO), "SIGUSR2 action changed");
    sigaction(rt, NULL, &sa);
    WL_CHECK(sa.sa_sigaction == on_rt && (sa.sa_flags & SA_SIGINFO), "SIGRTMIN+1 action changed");
    sigaction(SIGPIPE, NULL, &sa);
    WL_CHECK(sa.sa_handler == SIG_IGN, "SIGPIPE is no longer ignored");
    sigaction(SIGTRAP, NULL, &sa);
    WL_CHECK(sa.sa_handler == SIG_IGN, "SIGTRAP is no longer ignored");
    sigaction(SIGCHLD, NULL, &sa);
    WL_CHECK(sa.sa_handler == SIG_DFL && (sa.sa_flags & SA_NOCLDSTOP),
             "SIGCHLD lost SA_NOCLDSTOP (flags %#x)", sa.sa_flags);
    sigaction(SIGALRM, NULL, &sa);
    WL_CHECK(sa.sa_handler == on_alrm, "SIGALRM handler changed");

    /* Alternate stack. */
    stack_t now;
    sigaltstack(NULL, &now);
    WL_CHECK(now.ss_sp == alt_base && now.ss_size == ALT_SIZE && now.ss_flags == 0,
             "sigaltstack is %p/%zu/flags %d, expected %p/%d/0", now.ss_sp, now.ss_size,
             now.ss_flags, (void *)alt_base, ALT_SIZE);

    /* rlimit */
    getrlimit(RLIMIT_NOFILE, &rl);
    WL_CHECK(rl.rlim_cur == NOFILE_SOFT && rl.rlim_max == hard_at_ready,
             "RLIMIT_NOFILE is %llu/%llu, expected %d/%llu", (unsigned long long)rl.rlim_cur,
             (unsigned long long)rl.rlim_max, NOFILE_SOFT, (unsigned long long)hard_at_ready);

    /* Timer: interval intact, and it fires now, after the restore. */
    struct itimerval cur_it;
    getitimer(ITIMER_REAL, &cur_it);
    WL_CHECK(cur_it.it_interval.tv_sec == 0 && cur_it.it_interval.tv_usec == 10000,
             "ITIMER_REAL interval is %lds %ldus, expected 10ms", (long)cur_it.it_interval.tv_sec,
             (long)cur_it.it_interval.tv_usec);
    /* Verification runs after the restore, so ticks counted from here on
     * prove the timer fires in the restored process. */
    int t0 = ticks;
    wait_ticks(5, 3.0);
    WL_CHECK(ticks - t0 >= 5, "timer stopped: only %d SIGALRMs in 3 s", ticks - t0);
    WL_CHECK(ticks > ticks_at_ready, "tick count went back: %d at ready, %d now", ticks_at_ready,
             (int)ticks);

    /* SIGUSR1 on the alternate stack. */
    usr1_on_altstack = 0;
    usr1_alrm_blocked = 0;
    kill(getpid(), SIGUSR1);
    WL_CHECK(usr1_count == 1, "SIGUSR1 delivered %d times, expected 1", usr1_count);
    WL_CHECK(usr1_on_altstack, "SIGUSR1 handler did not run on the alternate stack");
    WL_CHECK(usr1_alrm_blocked, "SIGALRM was not blocked inside the SIGUSR1 handler");

    /* Unblock: pending signals are delivered before sigprocmask returns. */
    sigprocmask(SIG_UNBLOCK, &block, NULL);
    wl_sleep_ns(20 * 1000 * 1000); /* any extra (wrong) instance would show up by now */
    WL_CHECK(usr2_count == 1, "SIGUSR2 delivered %d times, expected once", usr2_count);
    WL_CHECK(usr2_count == 0 || usr2_value == 4242, "SIGUSR2 si_value %d, expected 4242",
             usr2_value);
    WL_CHECK(usr2_count == 0 || usr2_code == SI_QUEUE, "SIGUSR2 si_code %d, expected SI_QUEUE",
             usr2_code);
    WL_CHECK(rt_count == 3, "SIGRTMIN+1 delivered %d times, expected 3", rt_count);
    for (int i = 0; i < rt_count && i < 3; i++) {
        WL_CHECK(rt_values[i] == i + 1, "SIGRTMIN+1 #%d carried %d, expected %d", i + 1,
                 rt_values[i], i + 1);
        WL_CHECK(rt_codes[i] == SI_QUEUE, "SIGRTMIN+1 #%d si_code %d, expected SI_QUEUE", i + 1,
                 rt_codes[i]);
    }

    wl_finish();
}
