/*
 * epoll: epoll instances and their watches, one case per argv[3].
 *
 * Restored ("watches"; verifies itself on SIGTERM). Epoll EP (also dup'ed
 * as EPD, and shared with a child forked after the setup) watches:
 *   EV     an eventfd with count 5, EPOLLIN, cookie 0xdeadbeefcafef00d;
 *   PR     a pipe's read end, EPOLLIN|EPOLLET, data written after the
 *          last epoll_wait (one edge pending);
 *   PW     a pipe's write end, EPOLLOUT|EPOLLONESHOT, fired (disarmed);
 *   fd 40  an eventfd with count 1 added as fd 40, dup'ed to fd 41, fd 40
 *          then reused by INNER: a watch whose fd names another file;
 *   fd 40  INNER, a nested epoll watching an eventfd with count 1;
 *   fd 50  an eventfd with count 0 added as fd 50, dup'ed to 51, 50 closed;
 *   EX     an eventfd with count 0, EPOLLIN|EPOLLEXCLUSIVE;
 *   PO     a pipe's read end, EPOLLIN|EPOLLONESHOT, fired, and empty again;
 *   PE     a pipe's write end whose read end is closed (EPOLLERR), with
 *          EPOLLOUT|EPOLLONESHOT, fired;
 *   CE     an eventfd with count 1 the child opened and added, at an fd
 *          number that is another file in the parent;
 *   WK     an eventfd with count 0, EPOLLIN|EPOLLWAKEUP (if the kernel
 *          keeps it).
 * Epoll EP2 watches an eventfd ZX under fd number N, and EP2 is now fd N;
 * its busy poll is 25 us, budget 8, preferred (EPIOCSPARAMS, Linux 6.9).
 * After restart: one epoll_wait reports EV, PR, fd 40 twice (eventfd and
 * INNER), CE, with their cookies and nothing else; a second one the same but
 * PR (edge-triggered); the child sees the same epoll (its EPOLL_CTL_DEL of
 * EV shows in the parent); EPOLL_CTL_MOD / DEL on every original fd number
 * work (MOD of PW re-arms it, MOD of EX is EINVAL as for any exclusive
 * watch, fd 40 and 50 once they hold their targets again); INNER reports
 * its eventfd; EV still reads 5; PO stays disarmed when its pipe gets data;
 * PE does not report its EPOLLERR again; WK keeps EPOLLWAKEUP; EP2
 * reports ZX and its watch is deleted by fd number N once ZX is there; its
 * busy-poll parameters read back.
 *
 * Refused at checkpoint ("outside"): EP watches an eventfd whose only fd is
 * held by a process outside the tree (an orphaned grandchild); the
 * workload keeps running and verifies the watch is intact.
 * Refused too ("procwatch"): a child adds its /proc/self/mounts to the epoll
 * it shares with the parent (restart adds watches in the parent, and /proc
 * files are each process's own).
 */
#include "wl.h"

#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/wait.h>

/* <linux/eventpoll.h> of Linux 6.9, which the libc headers may lack. */
struct wl_epoll_params {
    uint32_t busy_poll_usecs;
    uint16_t busy_poll_budget;
    uint8_t prefer_busy_poll;
    uint8_t pad;
};
#define WL_EPIOCSPARAMS _IOW(0x8A, 0x01, struct wl_epoll_params)
#define WL_EPIOCGPARAMS _IOR(0x8A, 0x02, struct wl_epoll_params)

#define C_EV 0xdeadbeefcafef00dULL
#define C_PR 0x1111ULL
#define C_PW 0x2222ULL
#define C_E40 0x3333ULL
#define C_INNER_EV 0x4444ULL
#define C_INNER 0x5555ULL
#define C_E50 0x6666ULL
#define C_EX 0x7777ULL
#define C_PO 0x8888ULL
#define C_WK 0x9999ULL
#define C_PE 0xaaaaULL
#define C_CE 0xbbbbULL
#define C_ZX 0xccccULL

static const char *mode;
static int ep, epd, ev, pr, pr_w, pw, inner, ex, po, po_w, wk, pe;
static pid_t child;
static int report[2];
static int hold_w, gone_r;
static unsigned wk_kept;
static int ep2, zx;
static int params_set;

static void add(int epfd, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event e = {.events = events, .data.u64 = data};
    if (epoll_ctl(epfd, EPOLL_CTL_ADD, fd, &e) != 0)
        wl_die("epoll_ctl ADD fd %d", fd);
}

static int ctl(int epfd, int op, int fd, uint32_t events, uint64_t data)
{
    struct epoll_event e = {.events = events, .data.u64 = data};
    return epoll_ctl(epfd, op, fd, &e) == 0 ? 0 : errno;
}

/* The cookies one epoll_wait (no waiting) reports, as a bit set of the
 * C_* above (bit n for 0x1111 * n, bit 0 for C_EV), or -1. */
static int ready(int epfd, uint32_t *pw_events)
{
    struct epoll_event evs[16];
    int n = epoll_wait(epfd, evs, 16, 0), set = 0;
    if (n < 0)
        return -1;
    for (int i = 0; i < n; i++) {
        uint64_t d = evs[i].data.u64;
        if (d == C_EV)
            set |= 1;
        else if (d % 0x1111 == 0 && d / 0x1111 >= 1 && d / 0x1111 <= 12)
            set |= 1 << (d / 0x1111);
        else
            set |= 1 << 15;
        if (d == C_PW && pw_events)
            *pw_events = evs[i].events;
    }
    return set;
}

#define B(c) (1 << ((c) / 0x1111))

static int xeventfd(unsigned count)
{
    int fd = eventfd(count, EFD_NONBLOCK | EFD_CLOEXEC);
    if (fd < 0)
        wl_die("eventfd");
    return fd;
}

/* Puts the new fd `fd` at `at` exactly. */
static void move_to(int fd, int at)
{
    if (dup2(fd, at) != at)
        wl_die("dup2 %d", at);
    close(fd);
}

/* The mask of WK's watch as the kernel holds it (fdinfo of EP). */
static unsigned wk_mask(void)
{
    char path[64], *info;
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", ep);
    info = wl_read_file(path, NULL);
    char *line = info ? strstr(info, " data:             9999 ") : NULL;
    unsigned mask = 0;
    if (line) {
        while (line > info && line[-1] != '\n')
            line--;
        sscanf(line, "tfd: %*d events: %x", &mask);
    }
    free(info);
    return mask;
}

static void setup_watches(void)
{
    int p[2];
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        wl_die("epoll_create1");
    epd = dup(ep);
    ev = xeventfd(5);
    add(ep, ev, EPOLLIN, C_EV);
    if (pipe2(p, O_NONBLOCK) != 0)
        wl_die("pipe");
    pr = p[0];
    pr_w = p[1];
    add(ep, pr, EPOLLIN | EPOLLET, C_PR);
    if (pipe2(p, O_NONBLOCK) != 0) /* (its read end stays open: no EPOLLERR) */
        wl_die("pipe");
    pw = p[1];
    add(ep, pw, EPOLLOUT | EPOLLONESHOT, C_PW);
    /* fd 40: an eventfd, then another file (INNER) at that number. */
    move_to(xeventfd(1), 40);
    add(ep, 40, EPOLLIN, C_E40);
    if (dup2(40, 41) != 41)
        wl_die("dup2 41");
    inner = epoll_create1(0);
    if (inner < 0)
        wl_die("epoll_create1");
    move_to(inner, 40);
    inner = 40;
    int iev = xeventfd(1);
    add(inner, iev, EPOLLIN, C_INNER_EV);
    add(ep, inner, EPOLLIN, C_INNER);
    /* fd 50: closed, its eventfd alive at 51. */
    move_to(xeventfd(0), 50);
    add(ep, 50, EPOLLIN, C_E50);
    if (dup2(50, 51) != 51)
        wl_die("dup2 51");
    close(50);
    ex = xeventfd(0);
    add(ep, ex, EPOLLIN | EPOLLEXCLUSIVE, C_EX);
    if (pipe2(p, O_NONBLOCK) != 0)
        wl_die("pipe");
    po = p[0];
    po_w = p[1];
    add(ep, po, EPOLLIN | EPOLLONESHOT, C_PO);
    if (pipe2(p, O_NONBLOCK) != 0)
        wl_die("pipe");
    close(p[0]);
    pe = p[1];
    add(ep, pe, EPOLLOUT | EPOLLONESHOT, C_PE);
    wk = xeventfd(0);
    add(ep, wk, EPOLLIN | EPOLLWAKEUP, C_WK);
    /* (Kept with CAP_BLOCK_SUSPEND on a kernel with CONFIG_PM_SLEEP.) */
    wk_kept = wk_mask() & EPOLLWAKEUP;
    if (!wk_kept)
        fprintf(stderr, "epoll: this kernel drops EPOLLWAKEUP, not checked\n");
    if (write(po_w, "x", 1) != 1)
        wl_die("write pipe");

    int want = 1 | B(C_PW) | B(C_E40) | B(C_INNER) | B(C_PO) | B(C_PE);
    int got = ready(ep, NULL);
    if (got != want)
        wl_die("before checkpoint epoll reports %#x, not %#x", got, want);
    char x;
    if (read(po, &x, 1) != 1)
        wl_die("read pipe");
    /* PW, PO and PE fired: disarmed now. One PR edge pending. */
    if (write(pr_w, "hello", 5) != 5)
        wl_die("write pipe");
    /* EP2 watches ZX under the fd number EP2 itself has now. */
    int a = epoll_create1(EPOLL_CLOEXEC);
    zx = xeventfd(1);
    if (a < 0)
        wl_die("epoll_create1");
    add(a, zx, EPOLLIN, C_ZX);
    ep2 = zx;
    zx = dup(zx);
    if (dup2(a, ep2) != ep2)
        wl_die("dup2 ep2");
    close(a);
    struct wl_epoll_params bp = {.busy_poll_usecs = 25, .busy_poll_budget = 8, .prefer_busy_poll = 1};
    params_set = ioctl(ep2, WL_EPIOCSPARAMS, &bp) == 0;
    if (!params_set)
        fprintf(stderr, "epoll: no EPIOCSPARAMS (%s), busy poll not checked\n", strerror(errno));
    if (pipe(report) != 0)
        wl_die("pipe");
    child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        close(report[0]);
        /* CE: the child's own, at an fd number the parent uses for another
         * file (report[0]). */
        int ce = xeventfd(1);
        add(ep, ce, EPOLLIN, C_CE);
        if (write(report[1], "c", 1) != 1)
            _exit(3);
        wl_wait_term();
        /* The parent has seen the PR edge by now. */
        char res = 0;
        int s = ready(ep, NULL);
        if (s != (1 | B(C_E40) | B(C_INNER) | B(C_CE)))
            res |= 1;
        if (ctl(ep, EPOLL_CTL_DEL, ev, 0, 0) != 0)
            res |= 2;
        if (ctl(ep, EPOLL_CTL_MOD, ce, EPOLLIN, C_CE) != 0)
            res |= 4;
        if (write(report[1], &res, 1) != 1)
            _exit(3);
        _exit(0);
    }
    close(report[1]);
    char c;
    if (read(report[0], &c, 1) != 1)
        wl_die("the child did not add its eventfd");
}

static void verify_watches(void)
{
    int e;
    int base = 1 | B(C_E40) | B(C_INNER);
    int got = ready(ep, NULL);
    WL_CHECK(got == (base | B(C_CE) | B(C_PR)), "first epoll_wait reports %#x, not %#x", got,
             base | B(C_CE) | B(C_PR));
    got = ready(epd, NULL);
    WL_CHECK(got == (base | B(C_CE)),
             "second epoll_wait (dup'ed fd) reports %#x, not %#x (EPOLLET lost?)", got,
             base | B(C_CE));

    /* The child shares EP: its DEL of EV is seen here. */
    kill(child, SIGTERM);
    char res = -1;
    WL_CHECK(read(report[0], &res, 1) == 1, "no report from the child");
    WL_CHECK(res == 0, "child's checks failed: %d (1 readiness, 2 DEL of EV, 4 MOD of CE)", res);
    int st;
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "child exit status %d", st);
    WL_CHECK((e = ctl(ep, EPOLL_CTL_MOD, ev, EPOLLIN, C_EV)) == ENOENT,
             "MOD of EV after the child's DEL: %s", strerror(e));
    WL_CHECK((e = ctl(ep, EPOLL_CTL_ADD, ev, EPOLLIN, C_EV)) == 0, "ADD of EV again: %s",
             strerror(e));

    /* The fired one-shot watch: MOD re-arms it, it fires once. */
    WL_CHECK((e = ctl(ep, EPOLL_CTL_MOD, pw, EPOLLOUT | EPOLLONESHOT, C_PW)) == 0,
             "MOD of PW: %s", strerror(e));
    uint32_t pwe = 0;
    got = ready(ep, &pwe);
    WL_CHECK(got == (base | B(C_PW)) && pwe == EPOLLOUT,
             "after re-arming PW epoll reports %#x (PW events %#x)", got, pwe);
    got = ready(ep, NULL);
    WL_CHECK(got == base, "PW fired twice: %#x", got);

    /* Exclusive watches cannot be modified; a write wakes it. */
    WL_CHECK((e = ctl(ep, EPOLL_CTL_MOD, ex, EPOLLIN, C_EX)) == EINVAL,
             "MOD of the EPOLLEXCLUSIVE watch: %s (EXCLUSIVE lost?)", strerror(e));
    uint64_t one = 1;
    WL_CHECK(write(ex, &one, 8) == 8, "write EX");
    got = ready(ep, NULL);
    WL_CHECK(got == (base | B(C_EX)), "after writing EX epoll reports %#x", got);

    /* MOD and DEL by the original fd numbers. */
    WL_CHECK((e = ctl(ep, EPOLL_CTL_MOD, pr, EPOLLIN, C_PR)) == 0, "MOD of PR: %s", strerror(e));
    WL_CHECK((e = ctl(ep, EPOLL_CTL_DEL, pr, 0, 0)) == 0, "DEL of PR: %s", strerror(e));
    WL_CHECK((e = ctl(ep, EPOLL_CTL_DEL, ex, 0, 0)) == 0, "DEL of EX: %s", strerror(e));
    /* fd 40 is INNER: its watch; then the eventfd put back at 40. */
    got = ready(inner, NULL);
    WL_CHECK(got == B(C_INNER_EV), "INNER reports %#x", got);
    WL_CHECK((e = ctl(ep, EPOLL_CTL_MOD, 40, EPOLLIN, C_INNER)) == 0, "MOD of fd 40 (INNER): %s",
             strerror(e));
    WL_CHECK((e = ctl(ep, EPOLL_CTL_DEL, 40, 0, 0)) == 0, "DEL of fd 40 (INNER): %s",
             strerror(e));
    int keep_inner = dup(40);
    WL_CHECK(dup2(41, 40) == 40, "dup2 41 40");
    WL_CHECK((e = ctl(ep, EPOLL_CTL_MOD, 40, EPOLLIN, C_E40)) == 0,
             "MOD of fd 40 (the eventfd once there): %s", strerror(e));
    WL_CHECK((e = ctl(ep, EPOLL_CTL_DEL, 40, 0, 0)) == 0, "DEL of fd 40 (eventfd): %s",
             strerror(e));
    WL_CHECK(dup2(keep_inner, 40) == 40, "dup2 inner back");
    close(keep_inner);
    /* fd 50, closed since: its eventfd put back there. */
    WL_CHECK(dup2(51, 50) == 50, "dup2 51 50");
    WL_CHECK((e = ctl(ep, EPOLL_CTL_MOD, 50, EPOLLIN, C_E50)) == 0,
             "MOD of fd 50 (closed before the checkpoint): %s", strerror(e));
    WL_CHECK((e = ctl(ep, EPOLL_CTL_DEL, 50, 0, 0)) == 0, "DEL of fd 50: %s", strerror(e));
    close(50);
    got = ready(ep, NULL);
    WL_CHECK(got == 1, "at the end epoll reports %#x, only EV expected", got);

    struct wl_epoll_params bp = {0};
    WL_CHECK(!params_set || (ioctl(ep2, WL_EPIOCGPARAMS, &bp) == 0 && bp.busy_poll_usecs == 25 &&
                             bp.busy_poll_budget == 8 && bp.prefer_busy_poll == 1),
             "EP2's busy poll is %u us, budget %u, prefer %u", bp.busy_poll_usecs,
             bp.busy_poll_budget, bp.prefer_busy_poll);
    /* EP2's watch of ZX, under EP2's own fd number. */
    got = ready(ep2, NULL);
    WL_CHECK(got == B(C_ZX), "EP2 reports %#x", got);
    int c = dup(ep2);
    WL_CHECK(c >= 0 && dup2(zx, ep2) == ep2, "dup2 zx");
    WL_CHECK((e = ctl(c, EPOLL_CTL_DEL, ep2, 0, 0)) == 0, "DEL of ZX from EP2: %s", strerror(e));
    WL_CHECK(dup2(c, ep2) == ep2, "dup2 ep2 back");
    close(c);

    /* PO: data comes, it stays disarmed. */
    WL_CHECK(write(po_w, "y", 1) == 1, "write PO");
    got = ready(ep, NULL);
    WL_CHECK(got == 1, "PO fired again after restart: epoll reports %#x", got);
    unsigned mask = wk_mask();
    WL_CHECK(!wk_kept || (mask & wk_kept), "the watch of WK lost EPOLLWAKEUP (mask %#x)", mask);

    uint64_t n = 0;
    WL_CHECK(read(ev, &n, 8) == 8 && n == 5, "EV reads %llu, not 5", (unsigned long long)n);
    char buf[8] = {0};
    WL_CHECK(read(pr, buf, sizeof(buf)) == 5 && !memcmp(buf, "hello", 5), "PR reads \"%s\"",
             buf);
}

static void setup_outside(void)
{
    int hold[2], gone[2];
    if (pipe(hold) != 0 || pipe(gone) != 0)
        wl_die("pipe");
    ep = epoll_create1(EPOLL_CLOEXEC);
    ev = xeventfd(1);
    add(ep, ev, EPOLLIN, C_EV);
    pid_t c = fork();
    if (c < 0)
        wl_die("fork");
    if (c == 0) {
        if (fork() != 0)
            _exit(0);
        /* The grandchild, orphaned: holds EV until the workload ends. */
        close(hold[1]);
        close(gone[0]);
        char x;
        while (read(hold[0], &x, 1) > 0)
            ;
        _exit(0);
    }
    if (waitpid(c, NULL, 0) != c)
        wl_die("waitpid");
    close(hold[0]);
    close(gone[1]);
    hold_w = hold[1];
    gone_r = gone[0];
    close(ev);
}

/* The grandchild goes once the pipe closes. */
static void release_outside(void)
{
    close(hold_w);
    char x;
    WL_CHECK(read(gone_r, &x, 1) == 0, "the grandchild did not go");
    close(gone_r);
}

static void setup_procwatch(void)
{
    if (pipe(report) != 0)
        wl_die("pipe");
    ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0)
        wl_die("epoll_create1");
    child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        int m = open("/proc/self/mounts", O_RDONLY | O_CLOEXEC);
        struct epoll_event e = {.events = EPOLLPRI, .data.u64 = C_EV};
        if (m < 0 || epoll_ctl(ep, EPOLL_CTL_ADD, m, &e) != 0 || write(report[1], "m", 1) != 1)
            _exit(2);
        wl_wait_term();
        _exit(0);
    }
    close(report[1]);
    char c;
    if (read(report[0], &c, 1) != 1)
        wl_die("the child did not add its /proc file");
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "epoll");
    mode = argc > 3 ? argv[3] : "";
    if (!strcmp(mode, "watches"))
        setup_watches();
    else if (!strcmp(mode, "outside"))
        setup_outside();
    else if (!strcmp(mode, "procwatch"))
        setup_procwatch();
    else
        wl_die("unknown mode %s", mode);
    wl_ready();
    wl_wait_term();
    if (!strcmp(mode, "watches"))
        verify_watches();
    else if (!strcmp(mode, "procwatch")) {
        int st;
        kill(child, SIGTERM);
        WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                 "child exit status %d", st);
    } else {
        int got = ready(ep, NULL);
        WL_CHECK(got == 1, "epoll reports %#x, not EV", got);
    }
    wl_verify_common();
    if (!strcmp(mode, "outside"))
        release_outside();
    wl_finish();
}
