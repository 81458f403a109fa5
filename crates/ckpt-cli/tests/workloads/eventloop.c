/*
 * eventloop: every kind of the object seam in one process, as an event
 * loop would hold them. An epoll watches an eventfd (count 5), a periodic
 * timerfd, a signalfd with SIGUSR1 queued (value 77) and an inotify fd
 * watching a directory, each with its own cookie. A POSIX timer ticks
 * SIGRTMIN into a handler; the process holds an flock and a POSIX lock, and
 * a pidfd on a child. Verified on SIGTERM: epoll reports the same ready set
 * and cookies, each object reads what it held, the timers keep ticking, a
 * new file in the directory raises IN_CREATE through the epoll, the locks
 * block a second process, and the pidfd signals and reaps the child.
 */
#include "wl.h"

#include <poll.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/file.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/timerfd.h>
#include <sys/wait.h>

static int ep, ev, tf, sf, in, lockfd, posixfd, pidfd;
static int wd;
static timer_t ptimer;
static pid_t child;
static volatile sig_atomic_t rt_ticks;
static char dir[3100], lockpath[3100], posixpath[3100];

static void on_rt(int sig, siginfo_t *si, void *uc)
{
    (void)sig;
    (void)uc;
    if (si->si_value.sival_int == 0x55)
        rt_ticks++;
}

static void watch(int fd, uint64_t cookie)
{
    struct epoll_event e = {.events = EPOLLIN, .data.u64 = cookie};
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &e) != 0)
        wl_die("epoll_ctl ADD %d", fd);
}

/* poll and epoll_wait, again when the POSIX timer's signal interrupts them. */
static int poll_r(struct pollfd *p, int ms)
{
    int n;
    while ((n = poll(p, 1, ms)) < 0 && errno == EINTR)
        ;
    return n;
}

static int wait_one(struct epoll_event *e, int ms)
{
    int n;
    while ((n = epoll_wait(ep, e, 1, ms)) < 0 && errno == EINTR)
        ;
    return n;
}

/* The cookies epoll reports ready now, or-ed together. */
static uint64_t ready_now(void)
{
    struct epoll_event es[8];
    int n;
    while ((n = epoll_wait(ep, es, 8, 0)) < 0 && errno == EINTR)
        ;
    uint64_t all = 0;
    for (int i = 0; i < n; i++)
        all |= es[i].data.u64;
    return all;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "eventloop");
    snprintf(dir, sizeof(dir), "%s.dir", wl_result);
    snprintf(lockpath, sizeof(lockpath), "%s.flock", wl_result);
    snprintf(posixpath, sizeof(posixpath), "%s.posix", wl_result);
    mkdir(dir, 0700);

    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    struct sigaction sa = {.sa_sigaction = on_rt, .sa_flags = SA_SIGINFO | SA_RESTART};
    sigaction(SIGRTMIN, &sa, NULL);

    ep = epoll_create1(0);
    ev = eventfd(5, EFD_NONBLOCK);
    tf = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
    struct itimerspec its = {{0, 20000000}, {0, 20000000}};
    if (ep < 0 || ev < 0 || tf < 0 || timerfd_settime(tf, 0, &its, NULL) != 0)
        wl_die("epoll/eventfd/timerfd");
    sf = signalfd(-1, &m, SFD_NONBLOCK);
    in = inotify_init1(IN_NONBLOCK);
    if (sf < 0 || in < 0)
        wl_die("signalfd/inotify");
    wd = inotify_add_watch(in, dir, IN_CREATE);
    if (wd < 0)
        wl_die("inotify_add_watch %s", dir);
    watch(ev, 0x1);
    watch(tf, 0x2);
    watch(sf, 0x4);
    watch(in, 0x8);
    union sigval v = {.sival_int = 77};
    if (sigqueue(getpid(), SIGUSR1, v) != 0)
        wl_die("sigqueue");

    struct sigevent se = {.sigev_notify = SIGEV_SIGNAL, .sigev_signo = SIGRTMIN};
    se.sigev_value.sival_int = 0x55;
    struct itimerspec pt = {{0, 30000000}, {0, 30000000}};
    if (timer_create(CLOCK_MONOTONIC, &se, &ptimer) != 0 || timer_settime(ptimer, 0, &pt, NULL) != 0)
        wl_die("timer_create");

    lockfd = open(lockpath, O_RDWR | O_CREAT, 0644);
    posixfd = open(posixpath, O_RDWR | O_CREAT, 0644);
    struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
    if (lockfd < 0 || posixfd < 0 || flock(lockfd, LOCK_EX) != 0 || fcntl(posixfd, F_SETLK, &fl) != 0)
        wl_die("locks");

    child = fork();
    if (child == 0) {
        for (;;)
            pause();
    }
    pidfd = (int)syscall(SYS_pidfd_open, child, 0);
    if (pidfd < 0)
        wl_die("pidfd_open");

    /* Let both timers tick before the checkpoint. */
    while (rt_ticks < 2)
        pause();
    wl_install_term_handler();
    wl_ready();
    while (!wl_term)
        pause();

    wl_verify_common();
    uint64_t r = ready_now();
    WL_CHECK((r & 0x7) == 0x7, "epoll reports cookies %#llx, want eventfd, timerfd and signalfd",
             (unsigned long long)r);
    WL_CHECK(!(r & 0x8), "inotify ready before any event (restart's own events leaked)");
    uint64_t c = 0;
    WL_CHECK(read(ev, &c, 8) == 8 && c == 5, "eventfd count %llu", (unsigned long long)c);
    struct signalfd_siginfo ssi;
    WL_CHECK(read(sf, &ssi, sizeof(ssi)) == sizeof(ssi) && ssi.ssi_signo == SIGUSR1 &&
                 ssi.ssi_int == 77,
             "signalfd read signal %u value %d", ssi.ssi_signo, ssi.ssi_int);
    uint64_t exp = 0;
    WL_CHECK(read(tf, &exp, 8) == 8 && exp >= 1, "timerfd expirations %llu", (unsigned long long)exp);
    struct pollfd p = {.fd = tf, .events = POLLIN};
    WL_CHECK(poll_r(&p, 1000) == 1, "timerfd stopped ticking");
    int before = rt_ticks;
    double t0 = wl_monotonic();
    while (rt_ticks < before + 3 && wl_monotonic() - t0 < 5)
        wl_sleep_ns(10000000);
    WL_CHECK(rt_ticks >= before + 3, "POSIX timer stopped: %d ticks", rt_ticks - before);
    struct itimerspec now;
    WL_CHECK(timer_gettime(ptimer, &now) == 0 && now.it_interval.tv_nsec == 30000000,
             "POSIX timer id or interval changed");

    char f[3200];
    snprintf(f, sizeof(f), "%s/new", dir);
    close(open(f, O_CREAT | O_WRONLY, 0600));
    struct epoll_event e;
    int n = wait_one(&e, 1000);
    r = n == 1 ? e.data.u64 : 0;
    while (n == 1 && r != 0x8) { /* the timerfd may come first */
        if (r == 0x2)
            (void)!read(tf, &exp, 8);
        n = wait_one(&e, 1000);
        r = n == 1 ? e.data.u64 : 0;
    }
    WL_CHECK(r == 0x8, "no inotify readiness after creating %s", f);
    char buf[4096];
    ssize_t got;
    while ((got = read(in, buf, sizeof(buf))) < 0 && errno == EINTR)
        ;
    struct inotify_event *ie = (struct inotify_event *)buf;
    WL_CHECK(got > 0 && ie->wd == wd && (ie->mask & IN_CREATE) && !strcmp(ie->name, "new"),
             "inotify event wd %d mask %#x", got > 0 ? ie->wd : -1, got > 0 ? ie->mask : 0);
    unlink(f);

    pid_t probe = fork();
    if (probe == 0) {
        int a = open(lockpath, O_RDWR), b = open(posixpath, O_RDWR);
        struct flock q = {.l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 10};
        int flocked = flock(a, LOCK_EX | LOCK_NB) != 0 && errno == EWOULDBLOCK;
        int posix = fcntl(b, F_GETLK, &q) == 0 && q.l_type == F_WRLCK && q.l_pid == getppid();
        _exit(flocked && posix ? 0 : 1);
    }
    int st = 0;
    pid_t w;
    while ((w = waitpid(probe, &st, 0)) < 0 && errno == EINTR)
        ;
    WL_CHECK(w == probe && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "the locks do not block a second process");

    WL_CHECK(syscall(SYS_pidfd_send_signal, pidfd, SIGKILL, NULL, 0) == 0, "pidfd_send_signal");
    struct pollfd pp = {.fd = pidfd, .events = POLLIN};
    WL_CHECK(poll_r(&pp, 5000) == 1, "pidfd not readable after the child died");
    while ((w = waitpid(child, &st, 0)) < 0 && errno == EINTR)
        ;
    WL_CHECK(w == child && WIFSIGNALED(st) && WTERMSIG(st) == SIGKILL,
             "child status %#x", st);
    wl_finish();
}
