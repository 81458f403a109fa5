/*
 * timerfd: timerfds and signalfds (argv[3] picks the case).
 *
 * "timers":
 *   periodic  CLOCK_MONOTONIC, every 50 ms, never read before the
 *             checkpoint: after restart it has fired (ticks >= 1) and keeps
 *             firing at its rate (10 more expirations take 0.45 s .. 3 s),
 *             interval still 50 ms.
 *   oneshot   CLOCK_MONOTONIC, relative, 1 hour, TFD_NONBLOCK: not fired,
 *             still O_NONBLOCK, time left in [3600 s - elapsed - 1 s, 3600 s)
 *             (the time checkpointed does not count), no interval.
 *   boottime  CLOCK_BOOTTIME_ALARM (CLOCK_BOOTTIME without CAP_WAKE_ALARM),
 *             relative, 2 hours: same clock (fdinfo), time left ~2 hours.
 *   abs_real  CLOCK_REALTIME, TFD_TIMER_ABSTIME|TFD_TIMER_CANCEL_ON_SET, at
 *             now + 1 hour: expires at the same wall-clock time (within
 *             20 ms), settime flags still 03.
 *   abs_mono  CLOCK_MONOTONIC, TFD_TIMER_ABSTIME, at now + 1 hour: the same
 *             absolute expiry (restart in the same boot).
 *   abs_every CLOCK_REALTIME, TFD_TIMER_ABSTIME, first at now + 200 ms, every
 *             100 ms, never read before: its first read after restart counts
 *             every expiry since the first, checkpointed time included.
 *   ticks3    CLOCK_REALTIME, TFD_TIMER_ABSTIME, first 2.5 hours ago, every
 *             hour: 3 expirations unread, next in 30 minutes. Reads exactly 3
 *             after restart. Also dup()ed: the copy is the same description
 *             (reading 3 from the copy leaves nothing for the original).
 *   tick1     CLOCK_MONOTONIC, relative, 1 ms then every hour: 1 unread
 *             expiration, reads exactly 1.
 *   fast      CLOCK_MONOTONIC, every 20 us (due again before ckpt can read
 *             its fdinfo): still armed at that interval, and firing.
 *   disarmed  armed, then disarmed with an interval of 5 s: not readable,
 *             (0, 5 s); and one never armed: (0, 0).
 *
 * "signalfd":
 *   sfd       signalfd(SIGUSR1|SIGUSR2, SFD_NONBLOCK), both blocked, SIGUSR1
 *             sigqueue()d with value 4242: after restart fdinfo's sigmask is
 *             0000000000000a00, the read gives SIGUSR1, SI_QUEUE, 4242, our
 *             pid, then EAGAIN; a SIGUSR2 raised after restart reads too.
 *   sfd_usr2  a second signalfd for SIGUSR2 only, blocking: still blocking,
 *             sigmask 0000000000000800.
 *
 * "shared":
 *   a timerfd with 3 unread expirations (as ticks3), inherited by a child
 *   through fork: after restart the child reads 3 from it (on SIGUSR1 from
 *   the parent, reporting through a pipe), then the parent's fd has
 *   nothing left: one description again for both processes.
 *
 * "absmono":
 *   fd 100    CLOCK_MONOTONIC, TFD_TIMER_ABSTIME, at now + 1 hour; fd 101
 *             the same as a relative timer. Both still armed (not fired,
 *             time left in (0, 3600 s]), flags 01 and 00: the harness checks
 *             the time left from outside (the same expiry in the same boot,
 *             the time left at checkpoint in another).
 *
 * All wait in sigsuspend with SIGTERM the only signal unblocked.
 */
#include "wl.h"

#include <poll.h>
#include <sys/wait.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>

static double now_of(clockid_t c)
{
    struct timespec ts;
    clock_gettime(c, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double ts_d(struct timespec t)
{
    return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static struct timespec d_ts(double d)
{
    struct timespec t;
    t.tv_sec = (time_t)d;
    t.tv_nsec = (long)((d - (double)t.tv_sec) * 1e9);
    if (t.tv_nsec >= 1000000000L)
        t.tv_nsec = 999999999L;
    return t;
}

static int make_timer(clockid_t c, int cflags, int sflags, double value, double interval)
{
    int fd = timerfd_create(c, cflags | TFD_CLOEXEC);
    if (fd < 0)
        return -1;
    struct itimerspec v = {.it_interval = d_ts(interval), .it_value = d_ts(value)};
    if (value == 0)
        v.it_value.tv_sec = v.it_value.tv_nsec = 0;
    if (timerfd_settime(fd, sflags, &v, NULL) != 0)
        wl_die("timerfd_settime(clock %d, flags %d)", (int)c, sflags);
    return fd;
}

/* Value of `key` in our fdinfo of fd (the rest of the line), or "". */
static void fdinfo_field(int fd, const char *key, char *out, size_t len)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    out[0] = 0;
    FILE *f = fopen(path, "re");
    if (!f)
        return;
    size_t kl = strlen(key);
    while (fgets(line, sizeof(line), f)) {
        if (strncmp(line, key, kl) == 0) {
            char *v = line + kl;
            while (*v == ' ' || *v == '\t')
                v++;
            v[strcspn(v, "\n")] = 0;
            snprintf(out, len, "%s", v);
            break;
        }
    }
    fclose(f);
}

static void check_field(const char *what, int fd, const char *key, const char *want)
{
    char v[128];
    fdinfo_field(fd, key, v, sizeof(v));
    WL_CHECK(strcmp(v, want) == 0, "%s: fdinfo %s is '%s', not '%s'", what, key, v, want);
}

/* Expirations readable now without blocking: -1 on EAGAIN. */
static long read_ticks(int fd)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 0) != 1)
        return -1;
    uint64_t n;
    if (read(fd, &n, sizeof(n)) != sizeof(n))
        return -2;
    return (long)n;
}

/* Time left and interval of a timer. */
static void get_time(int fd, double *left, double *interval)
{
    struct itimerspec v;
    if (timerfd_gettime(fd, &v) != 0) {
        wl_fail("timerfd_gettime(%d): %s", fd, strerror(errno));
        *left = *interval = -1;
        return;
    }
    *left = ts_d(v.it_value);
    *interval = ts_d(v.it_interval);
}

static sigset_t wait_mask;

static void wait_for_term(void)
{
    while (!wl_term)
        sigsuspend(&wait_mask);
}

/* SIGTERM blocked except inside sigsuspend (no lost wakeup). */
static void block_term(void)
{
    sigset_t t;
    sigemptyset(&t);
    sigaddset(&t, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &t, NULL) != 0)
        wl_die("sigprocmask");
    sigprocmask(SIG_BLOCK, NULL, &wait_mask);
    sigdelset(&wait_mask, SIGTERM);
}

static int timers(void)
{
    double t_armed = now_of(CLOCK_MONOTONIC);
    int periodic = make_timer(CLOCK_MONOTONIC, 0, 0, 0.05, 0.05);
    int oneshot = make_timer(CLOCK_MONOTONIC, TFD_NONBLOCK, 0, 3600, 0);
    clockid_t boot_clock = CLOCK_BOOTTIME_ALARM;
    int boottime = make_timer(boot_clock, 0, 0, 7200, 0);
    if (boottime < 0 && errno == EPERM) {
        boot_clock = CLOCK_BOOTTIME;
        boottime = make_timer(boot_clock, 0, 0, 7200, 0);
    }
    double real_at = now_of(CLOCK_REALTIME) + 3600;
    int abs_real = make_timer(CLOCK_REALTIME, 0, TFD_TIMER_ABSTIME | TFD_TIMER_CANCEL_ON_SET,
                              real_at, 0);
    double mono_at = now_of(CLOCK_MONOTONIC) + 3600;
    int abs_mono = make_timer(CLOCK_MONOTONIC, 0, TFD_TIMER_ABSTIME, mono_at, 0);
    double every_at = now_of(CLOCK_REALTIME) + 0.2;
    int abs_every = make_timer(CLOCK_REALTIME, 0, TFD_TIMER_ABSTIME, every_at, 0.1);
    int ticks3 = make_timer(CLOCK_REALTIME, TFD_NONBLOCK, TFD_TIMER_ABSTIME,
                            now_of(CLOCK_REALTIME) - 9000, 3600);
    int ticks3_dup = fcntl(ticks3, F_DUPFD_CLOEXEC, 0);
    int tick1 = make_timer(CLOCK_MONOTONIC, 0, 0, 0.001, 3600);
    int disarmed = make_timer(CLOCK_MONOTONIC, 0, 0, 3600, 5);
    struct itimerspec off = {.it_interval = {5, 0}};
    if (timerfd_settime(disarmed, 0, &off, NULL) != 0)
        wl_die("disarm");
    int never = timerfd_create(CLOCK_MONOTONIC, TFD_CLOEXEC);
    int fast = make_timer(CLOCK_MONOTONIC, TFD_NONBLOCK, 0, 0.00002, 0.00002);
    if (periodic < 0 || oneshot < 0 || boottime < 0 || abs_real < 0 || abs_mono < 0 ||
        abs_every < 0 || ticks3 < 0 || ticks3_dup < 0 || tick1 < 0 || never < 0 || fast < 0)
        wl_die("timerfd_create");
    /* Let tick1 fire. */
    for (int i = 0; i < 1000; i++) {
        struct pollfd p = {.fd = tick1, .events = POLLIN};
        if (poll(&p, 1, 10) == 1)
            break;
    }

    block_term();
    wl_ready();
    wait_for_term();
    wl_verify_common();

    double left, interval, elapsed;

    /* periodic: fired meanwhile, and keeps its rate. */
    get_time(periodic, &left, &interval);
    WL_CHECK(interval > 0.0499 && interval < 0.0501, "periodic: interval %.6f s, not 0.05",
             interval);
    WL_CHECK(left > 0 && left <= 0.05, "periodic: %.6f s left, not in (0, 0.05]", left);
    long first = read_ticks(periodic);
    if (first < 0) {
        struct pollfd p = {.fd = periodic, .events = POLLIN};
        if (poll(&p, 1, 1000) == 1)
            first = read_ticks(periodic);
    }
    WL_CHECK(first >= 1, "periodic: read %ld expirations, not >= 1", first);
    double t0 = wl_monotonic();
    long more = 0;
    while (more < 10 && wl_monotonic() - t0 < 5) {
        struct pollfd p = {.fd = periodic, .events = POLLIN};
        if (poll(&p, 1, 1000) == 1) {
            long n = read_ticks(periodic);
            if (n > 0)
                more += n;
        }
    }
    double took = wl_monotonic() - t0;
    WL_CHECK(more >= 10 && took >= 0.44 && took < 3,
             "periodic: %ld expirations in %.3f s, want 10 in 0.45 s .. 3 s", more, took);

    /* oneshot: relative, 1 hour minus the time the process ran. */
    elapsed = now_of(CLOCK_MONOTONIC) - t_armed;
    get_time(oneshot, &left, &interval);
    WL_CHECK(left < 3600 && left > 3600 - elapsed - 1,
             "oneshot: %.3f s left, not in (%.3f, 3600) (%.3f s since armed)", left,
             3600 - elapsed - 1, elapsed);
    WL_CHECK(interval == 0, "oneshot: interval %.6f, not 0", interval);
    WL_CHECK(read_ticks(oneshot) == -1, "oneshot: readable, it should not have fired");
    WL_CHECK(fcntl(oneshot, F_GETFL) & O_NONBLOCK, "oneshot: lost O_NONBLOCK");
    check_field("oneshot", oneshot, "settime flags:", "00");

    /* boottime */
    elapsed = now_of(CLOCK_MONOTONIC) - t_armed;
    get_time(boottime, &left, &interval);
    WL_CHECK(left < 7200 && left > 7200 - elapsed - 1, "boottime: %.3f s left, not ~7200",
             left);
    char want[32];
    snprintf(want, sizeof(want), "%d", (int)boot_clock);
    check_field("boottime", boottime, "clockid:", want);
    WL_CHECK(!(fcntl(boottime, F_GETFL) & O_NONBLOCK), "boottime: became O_NONBLOCK");

    /* abs_real: the same wall-clock expiry. */
    get_time(abs_real, &left, &interval);
    double at = now_of(CLOCK_REALTIME) + left;
    WL_CHECK(at > real_at - 0.02 && at < real_at + 0.02,
             "abs_real: expires at %.6f, not %.6f (%.6f s off)", at, real_at, at - real_at);
    check_field("abs_real", abs_real, "settime flags:", "03");
    check_field("abs_real", abs_real, "clockid:", "0");
    WL_CHECK(read_ticks(abs_real) == -1, "abs_real: readable, it should not have fired");

    /* abs_mono: the same monotonic expiry (same boot). */
    get_time(abs_mono, &left, &interval);
    at = now_of(CLOCK_MONOTONIC) + left;
    WL_CHECK(at > mono_at - 0.02 && at < mono_at + 0.02,
             "abs_mono: expires at %.6f, not %.6f (%.6f s off)", at, mono_at, at - mono_at);
    check_field("abs_mono", abs_mono, "settime flags:", "01");

    /* abs_every: every expiry since the first is counted. */
    long n = read_ticks(abs_every);
    double since = now_of(CLOCK_REALTIME) - every_at;
    long expect = since < 0 ? 0 : (long)(since / 0.1) + 1;
    WL_CHECK(n >= expect - 1 && n <= expect,
             "abs_every: read %ld expirations, %.3f s after the first (every 0.1 s): want %ld",
             n, since, expect);
    get_time(abs_every, &left, &interval);
    WL_CHECK(left > 0 && left <= 0.1 && interval > 0.0999 && interval < 0.1001,
             "abs_every: %.6f s left, interval %.6f", left, interval);

    /* ticks3 and its dup: one description with 3 unread expirations. */
    n = read_ticks(ticks3_dup);
    WL_CHECK(n == 3, "ticks3: the dup read %ld expirations, not 3", n);
    n = read_ticks(ticks3);
    WL_CHECK(n == -1, "ticks3: the original read %ld after the dup read all, not EAGAIN", n);
    get_time(ticks3, &left, &interval);
    WL_CHECK(left > 1700 && left < 1801 && interval == 3600,
             "ticks3: %.3f s left (want ~1800), interval %.3f", left, interval);

    elapsed = now_of(CLOCK_MONOTONIC) - t_armed;
    n = read_ticks(tick1);
    WL_CHECK(n == 1, "tick1: read %ld expirations, not 1", n);
    get_time(tick1, &left, &interval);
    WL_CHECK(left > 3600 - elapsed - 1 && left < 3600 && interval == 3600,
             "tick1: %.3f s left, interval %.3f", left, interval);

    get_time(disarmed, &left, &interval);
    WL_CHECK(left == 0 && interval == 5, "disarmed: (%.6f, %.6f), not (0, 5)", left, interval);
    WL_CHECK(read_ticks(disarmed) == -1, "disarmed: readable");
    get_time(never, &left, &interval);
    WL_CHECK(left == 0 && interval == 0, "never: (%.6f, %.6f), not (0, 0)", left, interval);
    check_field("never", never, "ticks:", "0");

    get_time(fast, &left, &interval);
    WL_CHECK(interval > 0.0000199 && interval < 0.0000201, "fast: interval %.9f, not 20 us",
             interval);
    n = read_ticks(fast);
    if (n < 0) {
        struct pollfd p = {.fd = fast, .events = POLLIN};
        if (poll(&p, 1, 1000) == 1)
            n = read_ticks(fast);
    }
    WL_CHECK(n >= 1, "fast: read %ld, it should keep firing", n);
    wl_finish();
}

static int signals(void)
{
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigaddset(&m, SIGUSR2);
    if (sigprocmask(SIG_BLOCK, &m, NULL) != 0)
        wl_die("sigprocmask");
    int sfd = signalfd(-1, &m, SFD_NONBLOCK | SFD_CLOEXEC);
    sigset_t m2;
    sigemptyset(&m2);
    sigaddset(&m2, SIGUSR2);
    int sfd_usr2 = signalfd(-1, &m2, SFD_CLOEXEC);
    if (sfd < 0 || sfd_usr2 < 0)
        wl_die("signalfd");
    union sigval v = {.sival_int = 4242};
    if (sigqueue(getpid(), SIGUSR1, v) != 0)
        wl_die("sigqueue");

    block_term();
    wl_ready();
    wait_for_term();
    wl_verify_common();

    check_field("sfd", sfd, "sigmask:", "0000000000000a00");
    check_field("sfd_usr2", sfd_usr2, "sigmask:", "0000000000000800");
    WL_CHECK(fcntl(sfd, F_GETFL) & O_NONBLOCK, "sfd: lost O_NONBLOCK");
    WL_CHECK(!(fcntl(sfd_usr2, F_GETFL) & O_NONBLOCK), "sfd_usr2: became O_NONBLOCK");

    struct signalfd_siginfo si;
    ssize_t r = read(sfd, &si, sizeof(si));
    if (r != sizeof(si)) {
        wl_fail("sfd: read returned %zd (%s), not a siginfo", r, r < 0 ? strerror(errno) : "");
    } else {
        WL_CHECK(si.ssi_signo == SIGUSR1 && si.ssi_code == SI_QUEUE && si.ssi_int == 4242 &&
                     (pid_t)si.ssi_pid == getpid(),
                 "sfd: read signal %u code %d value %d pid %u, want SIGUSR1 SI_QUEUE 4242 %d",
                 si.ssi_signo, si.ssi_code, si.ssi_int, si.ssi_pid, (int)getpid());
    }
    r = read(sfd, &si, sizeof(si));
    WL_CHECK(r < 0 && errno == EAGAIN, "sfd: a second read returned %zd, not EAGAIN", r);

    raise(SIGUSR2);
    r = read(sfd_usr2, &si, sizeof(si));
    WL_CHECK(r == sizeof(si) && si.ssi_signo == SIGUSR2,
             "sfd_usr2: after raise(SIGUSR2) read %zd, signal %u", r, si.ssi_signo);
    wl_finish();
}

static volatile sig_atomic_t got_usr1;

static void on_usr1(int sig)
{
    (void)sig;
    got_usr1 = 1;
}

static int shared(void)
{
    int tfd = make_timer(CLOCK_REALTIME, TFD_NONBLOCK, TFD_TIMER_ABSTIME,
                         now_of(CLOCK_REALTIME) - 9000, 3600);
    int p[2];
    if (tfd < 0 || pipe2(p, O_CLOEXEC) != 0)
        wl_die("timerfd_create/pipe");
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    if (sigaction(SIGUSR1, &sa, NULL) != 0)
        wl_die("sigaction(SIGUSR1)");
    sigset_t usr1;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, NULL);
    block_term();
    pid_t child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        close(p[0]);
        sigset_t m = wait_mask;
        sigdelset(&m, SIGUSR1);
        while (!got_usr1)
            sigsuspend(&m);
        long n = read_ticks(tfd);
        if (write(p[1], &n, sizeof(n)) != sizeof(n))
            _exit(3);
        _exit(0);
    }
    close(p[1]);
    wl_ready();
    wait_for_term();
    wl_verify_common();

    kill(child, SIGUSR1);
    long n = -100;
    struct pollfd pf = {.fd = p[0], .events = POLLIN};
    if (poll(&pf, 1, 10000) != 1 || read(p[0], &n, sizeof(n)) != sizeof(n))
        wl_fail("shared: no answer from the child %d", (int)child);
    WL_CHECK(n == 3, "shared: the child read %ld expirations, not 3", n);
    n = read_ticks(tfd);
    WL_CHECK(n == -1, "shared: the parent read %ld after the child read all, not EAGAIN", n);
    int status;
    WL_CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
                 WEXITSTATUS(status) == 0,
             "shared: child %d did not exit 0", (int)child);
    wl_finish();
}

static int absmono(void)
{
    int a = make_timer(CLOCK_MONOTONIC, 0, TFD_TIMER_ABSTIME, now_of(CLOCK_MONOTONIC) + 3600, 0);
    int r = make_timer(CLOCK_MONOTONIC, 0, 0, 3600, 0);
    if (a < 0 || r < 0 || dup3(a, 100, O_CLOEXEC) != 100 || dup3(r, 101, O_CLOEXEC) != 101)
        wl_die("timerfd_create/dup3");
    close(a);
    close(r);
    block_term();
    wl_ready();
    wait_for_term();
    wl_verify_common();
    const int fds[] = {100, 101};
    const char *flags[] = {"01", "00"};
    for (int i = 0; i < 2; i++) {
        double left, interval;
        get_time(fds[i], &left, &interval);
        WL_CHECK(left > 0 && left <= 3600 && interval == 0, "fd %d: %.3f s left, interval %.3f",
                 fds[i], left, interval);
        WL_CHECK(read_ticks(fds[i]) == -1, "fd %d: fired", fds[i]);
        check_field("absmono", fds[i], "settime flags:", flags[i]);
    }
    wl_finish();
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "timerfd");
    const char *mode = argc > 3 ? argv[3] : "";
    if (strcmp(mode, "timers") == 0)
        return timers();
    if (strcmp(mode, "signalfd") == 0)
        return signals();
    if (strcmp(mode, "shared") == 0)
        return shared();
    if (strcmp(mode, "absmono") == 0)
        return absmono();
    fprintf(stderr, "timerfd: unknown mode '%s'\n", mode);
    return 2;
}
