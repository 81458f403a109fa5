/*
 * ptimers: POSIX timers (timer_create) of every notify kind.
 *
 *   mono   CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN, sigev_value 0x1234, every
 *          20 ms: keeps ticking, and the handler sees si_code SI_TIMER,
 *          si_value 0x1234 and si_timerid = its id.
 *   gap    created after mono and deleted again: the ids are not contiguous.
 *   real   CLOCK_REALTIME one-shot armed for 1 h: about 1 h left (a minute of
 *          slack), no interval.
 *   thr    CLOCK_MONOTONIC, SIGEV_THREAD_ID to a second thread, SIGRTMIN+1
 *          every 20 ms: keeps ticking, always taken by that thread.
 *   none   CLOCK_BOOTTIME, SIGEV_NONE, 2 h left, interval 5 s: same value.
 *   pend   CLOCK_MONOTONIC every 50 ms, SIGRTMIN+2 blocked, so its signal is
 *          pending at checkpoint: unblocked 200 ms into verification, it is
 *          delivered once (the kernel keeps one signal and counts overruns:
 *          si_overrun >= 3; SI_TIMER, si_value 0x77, si_timerid its id) and
 *          the timer keeps ticking.
 *   shot   one-shot, expired with SIGRTMIN+3 blocked: its signal is
 *          delivered once when unblocked, and the timer stays disarmed.
 *   stale  one-shot, expired with SIGRTMIN+3 blocked, then armed again for
 *          1 h: the kernel drops the stale pending signal on delivery, so
 *          nothing comes when it is unblocked, and 1 h is left.
 * argv[3] "cpu" adds a CLOCK_PROCESS_CPUTIME_ID timer, "dead-target" a
 * SIGEV_THREAD_ID timer whose thread has exited: checkpoints that must be
 * refused, after which the workload still passes.
 * Verification also checks that the ids in /proc/self/timers are the ones
 * the timers had (the handles the program holds still work) and that each
 * timer_gettime() answers for its own timer.
 */
#include "wl.h"

#include <pthread.h>
#include <sys/syscall.h>

#define TICK_NS (20 * 1000 * 1000L)
#define REAL_S 3600
#define NONE_S 7200
#define NONE_IV_S 5
#define SLACK_S 60

static timer_t t_mono, t_real, t_thr, t_none, t_pend, t_shot, t_stale;
static int id_mono, id_gap, id_real, id_thr, id_none, id_pend, id_shot, id_stale;
static char ids_at_ready[512];

static volatile int mono_ticks, mono_bad_code, mono_bad_timerid;
static volatile long mono_last_value;
static volatile int thr_ticks, thr_wrong_thread;
static volatile int pend_ticks, pend_bad, pend_overrun;
static volatile int shot_got, stale_got, other_got;
static volatile pid_t worker_tid;

static void on_mono(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_code != SI_TIMER)
        mono_bad_code = si->si_code ? si->si_code : -999;
    if (si->si_timerid != id_mono)
        mono_bad_timerid = si->si_timerid + 1000000;
    mono_last_value = (long)si->si_value.sival_ptr;
    mono_ticks++;
}

static void on_thr(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    (void)si;
    if ((pid_t)syscall(SYS_gettid) != worker_tid)
        thr_wrong_thread++;
    thr_ticks++;
}

static void on_pend(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_code != SI_TIMER || si->si_timerid != id_pend || si->si_value.sival_ptr != (void *)0x77)
        pend_bad++;
    if (pend_ticks++ == 0)
        pend_overrun = si->si_overrun;
}

static void on_shot(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_code == SI_TIMER && si->si_timerid == id_shot)
        shot_got++;
    else if (si->si_code == SI_TIMER && si->si_timerid == id_stale)
        stale_got++;
    else
        other_got++;
}

static void *short_lived(void *arg)
{
    *(volatile pid_t *)arg = (pid_t)syscall(SYS_gettid);
    wl_sleep_ns(100 * 1000 * 1000L);
    return NULL;
}

static void *worker(void *arg)
{
    (void)arg;
    worker_tid = (pid_t)syscall(SYS_gettid);
    for (;;)
        pause();
    return NULL;
}

static void set_action(int sig, void (*h)(int, siginfo_t *, void *))
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_sigaction = h;
    sa.sa_flags = SA_SIGINFO | SA_RESTART;
    sigemptyset(&sa.sa_mask);
    if (sigaction(sig, &sa, NULL) != 0)
        wl_die("sigaction(%d)", sig);
}

static timer_t make(clockid_t clock, int notify, int sig, long value, pid_t tid, int *id)
{
    struct sigevent ev;
    timer_t t;
    memset(&ev, 0, sizeof(ev));
    ev.sigev_notify = notify;
    ev.sigev_signo = sig;
    ev.sigev_value.sival_ptr = (void *)value;
    if (notify == SIGEV_THREAD_ID)
        ev._sigev_un._tid = tid;
    if (timer_create(clock, &ev, &t) != 0)
        wl_die("timer_create(clock %d, notify %d)", (int)clock, notify);
    /* For these kinds glibc's timer_t is the kernel's id. */
    *id = (int)(intptr_t)t;
    return t;
}

static void arm(timer_t t, long value_s, long value_ns, long iv_s, long iv_ns)
{
    struct itimerspec its = {{iv_s, iv_ns}, {value_s, value_ns}};
    if (timer_settime(t, 0, &its, NULL) != 0)
        wl_die("timer_settime");
}

/* The ids listed in /proc/self/timers, sorted, as "0,2,3". */
static void proc_ids(char *buf, size_t len)
{
    int ids[64], n = 0;
    char *text = wl_read_file("/proc/self/timers", NULL);
    buf[0] = 0;
    if (!text)
        return;
    for (char *p = text; (p = strstr(p, "ID: ")) != NULL && n < 64; p += 4)
        ids[n++] = atoi(p + 4);
    free(text);
    qsort(ids, (size_t)n, sizeof(int), wl_cmp_int);
    wl_format_fds(buf, len, ids, n);
}

static int wait_more(volatile int *ticks, int n, double max_s)
{
    int start = *ticks;
    double t0 = wl_monotonic();
    while (*ticks - start < n && wl_monotonic() - t0 < max_s)
        wl_sleep_ns(5 * 1000 * 1000);
    return *ticks - start >= n;
}

static void check_left(const char *name, timer_t t, long want_s, long want_iv_s, long want_iv_ns)
{
    struct itimerspec its;
    if (timer_gettime(t, &its) != 0) {
        wl_fail("%s: timer_gettime: %s", name, strerror(errno));
        return;
    }
    double left = (double)its.it_value.tv_sec + (double)its.it_value.tv_nsec / 1e9;
    WL_CHECK(left <= want_s && left > want_s - SLACK_S, "%s: %.3f s left, want about %ld", name,
             left, want_s);
    WL_CHECK(its.it_interval.tv_sec == want_iv_s && its.it_interval.tv_nsec == want_iv_ns,
             "%s: interval %ld.%09ld, want %ld.%09ld", name, (long)its.it_interval.tv_sec,
             its.it_interval.tv_nsec, want_iv_s, want_iv_ns);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "ptimers");
    const int sig_mono = SIGRTMIN, sig_thr = SIGRTMIN + 1, sig_pend = SIGRTMIN + 2;
    const int sig_shot = SIGRTMIN + 3;
    set_action(sig_mono, on_mono);
    set_action(sig_thr, on_thr);
    set_action(sig_pend, on_pend);
    set_action(sig_shot, on_shot);

    /* Only the worker takes sig_thr (a thread-directed signal would wait
     * for it anyway; this makes a stray process-wide one visible too). */
    sigset_t thr_only;
    sigemptyset(&thr_only);
    sigaddset(&thr_only, sig_thr);
    sigset_t pend_set;
    sigemptyset(&pend_set);
    sigaddset(&pend_set, sig_pend);
    sigaddset(&pend_set, sig_shot);
    /* Blocked in every thread, so it stays pending. */
    sigprocmask(SIG_BLOCK, &pend_set, NULL);
    pthread_t th;
    if (pthread_create(&th, NULL, worker, NULL) != 0)
        wl_die("pthread_create");
    sigprocmask(SIG_BLOCK, &thr_only, NULL);
    while (!worker_tid)
        wl_sleep_ns(1000 * 1000);

    t_mono = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, sig_mono, 0x1234, 0, &id_mono);
    timer_t gap = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGALRM, 0, 0, &id_gap);
    t_real = make(CLOCK_REALTIME, SIGEV_SIGNAL, SIGUSR1, 7, 0, &id_real);
    if (timer_delete(gap) != 0)
        wl_die("timer_delete");
    t_thr = make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, sig_thr, 0x5678, worker_tid, &id_thr);
    t_none = make(CLOCK_BOOTTIME, SIGEV_NONE, 0, 0, 0, &id_none);
    t_pend = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, sig_pend, 0x77, 0, &id_pend);
    t_shot = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, sig_shot, 0, 0, &id_shot);
    t_stale = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, sig_shot, 0, 0, &id_stale);
    const char *mode = argc > 3 ? argv[3] : "";
    int id_extra = -1;
    if (strcmp(mode, "cpu") == 0) {
        timer_t t = make(CLOCK_PROCESS_CPUTIME_ID, SIGEV_SIGNAL, SIGUSR2, 0, 0, &id_extra);
        arm(t, REAL_S, 0, 0, 0);
    } else if (strcmp(mode, "dead-target") == 0) {
        volatile pid_t tid = 0;
        pthread_t s;
        if (pthread_create(&s, NULL, short_lived, (void *)&tid) != 0)
            wl_die("pthread_create");
        while (!tid)
            wl_sleep_ns(1000 * 1000);
        make(CLOCK_MONOTONIC, SIGEV_THREAD_ID, SIGUSR2, 0, tid, &id_extra);
        pthread_join(s, NULL);
    } else if (*mode) {
        wl_die("unknown mode %s", mode);
    }
    fprintf(stderr, "ptimers: ids mono %d gap %d (deleted) real %d thr %d none %d pend %d extra %d\n",
            id_mono, id_gap, id_real, id_thr, id_none, id_pend, id_extra);

    arm(t_mono, 0, TICK_NS, 0, TICK_NS);
    arm(t_real, REAL_S, 0, 0, 0);
    arm(t_thr, 0, TICK_NS, 0, TICK_NS);
    arm(t_none, NONE_S, 0, NONE_IV_S, 0);
    arm(t_pend, 0, 50 * 1000 * 1000L, 0, 50 * 1000 * 1000L);
    arm(t_shot, 0, 1000 * 1000L, 0, 0);
    arm(t_stale, 0, 1000 * 1000L, 0, 0);
    for (double t0 = wl_monotonic();;) {
        struct itimerspec a, b;
        timer_gettime(t_shot, &a);
        timer_gettime(t_stale, &b);
        if (!a.it_value.tv_sec && !a.it_value.tv_nsec && !b.it_value.tv_sec && !b.it_value.tv_nsec)
            break; /* both expired, their signals queued */
        if (wl_monotonic() - t0 > 5)
            wl_die("the one-shot timers do not expire");
        wl_sleep_ns(1000 * 1000);
    }
    arm(t_stale, REAL_S, 0, 0, 0);
    if (!wait_more(&mono_ticks, 3, 5) || !wait_more(&thr_ticks, 3, 5))
        wl_die("timers do not tick (mono %d, thr %d)", mono_ticks, thr_ticks);
    for (double t0 = wl_monotonic();;) {
        sigset_t p;
        sigpending(&p);
        if (sigismember(&p, sig_pend))
            break;
        if (wl_monotonic() - t0 > 5)
            wl_die("the pend timer's signal never became pending");
        wl_sleep_ns(5 * 1000 * 1000);
    }
    proc_ids(ids_at_ready, sizeof(ids_at_ready));

    wl_ready();
    while (!wl_term)
        pause();

    wl_verify_common();
    char ids_now[512];
    proc_ids(ids_now, sizeof(ids_now));
    WL_CHECK(strcmp(ids_now, ids_at_ready) == 0, "timer ids {%s}, were {%s}", ids_now,
             ids_at_ready);
    WL_CHECK(wait_more(&mono_ticks, 5, 5), "mono: no more ticks (%d so far)", mono_ticks);
    WL_CHECK(!mono_bad_code, "mono: si_code %d, not SI_TIMER", mono_bad_code);
    WL_CHECK(!mono_bad_timerid, "mono: si_timerid %d, not %d", mono_bad_timerid - 1000000,
             id_mono);
    WL_CHECK(mono_last_value == 0x1234, "mono: si_value %#lx, not 0x1234", mono_last_value);
    check_left("mono", t_mono, 1, 0, TICK_NS);
    WL_CHECK(wait_more(&thr_ticks, 5, 5), "thr: no more ticks (%d so far)", thr_ticks);
    WL_CHECK(!thr_wrong_thread, "thr: %d ticks taken by another thread than %d",
             thr_wrong_thread, (int)worker_tid);
    check_left("real", t_real, REAL_S, 0, 0);
    check_left("none", t_none, NONE_S, NONE_IV_S, 0);
    WL_CHECK(pend_ticks == 0, "pend: delivered while blocked");
    wl_sleep_ns(200 * 1000 * 1000L); /* 4 expiries of pend while blocked */
    sigprocmask(SIG_UNBLOCK, &pend_set, NULL);
    WL_CHECK(pend_ticks == 1, "pend: %d signals delivered on unblocking, want 1", pend_ticks);
    WL_CHECK(pend_overrun >= 3, "pend: si_overrun %d, want >= 3", pend_overrun);
    WL_CHECK(shot_got == 1, "shot: %d signals delivered, want 1", shot_got);
    WL_CHECK(stale_got == 0, "stale: its dropped signal was delivered %d times", stale_got);
    WL_CHECK(other_got == 0, "shot/stale: %d unexpected signals", other_got);
    check_left("shot", t_shot, 0, 0, 0);
    check_left("stale", t_stale, REAL_S, 0, 0);
    WL_CHECK(wait_more(&pend_ticks, 3, 5), "pend: no more ticks (%d so far)", pend_ticks);
    WL_CHECK(!pend_bad, "pend: %d signals with the wrong si_code, si_timerid or si_value", pend_bad);
    /* The deleted id is still free. */
    struct itimerspec its;
    WL_CHECK(timer_gettime((timer_t)(intptr_t)id_gap, &its) != 0 && errno == EINVAL,
             "gap: deleted timer %d exists again", id_gap);
    wl_finish();
}
