/*
 * inotify: inotify instances and pidfds, one case per argv[3].
 *
 * Restored (each verifies itself on SIGTERM):
 *   inotify  an IN_NONBLOCK inotify at fd 40 watching RESULT.d (IN_CREATE |
 *            IN_DELETE | IN_OPEN | IN_EXCL_UNLINK, wd 1) and RESULT.f
 *            (IN_MODIFY | IN_ONESHOT, wd 3); wd 2 (on RESULT.e) was removed
 *            and its IN_IGNORED read; RESULT.d/held is open at fd 44 (so the
 *            restart reopens a file of the watched directory). After
 *            restore: the watch lines of its fdinfo are as before, it is
 *            still non-blocking with an empty queue (no event of the
 *            restart itself), creating RESULT.d/new gives IN_CREATE and
 *            IN_OPEN "new" on wd 1, writing
 *            RESULT.f gives IN_MODIFY on wd 3 (then IN_IGNORED: one-shot),
 *            removing RESULT.d/new gives IN_DELETE on wd 1, a new watch gets
 *            wd 4 and inotify_rm_watch of wd 1 and 4 succeeds.
 *   pidfd    a child (pausing until SIGUSR1, then exiting 7) and a
 *            PIDFD_NONBLOCK pidfd on it at fd 41: after restore the pidfd is
 *            not readable while the child lives, pidfd_send_signal(SIGUSR1)
 *            works, poll reports the exit and waitid(P_PIDFD) gives status 7.
 *   pidfddead  pidfds on reaped processes: two (fds 41, 42) on a child that
 *            exited 3, one (fd 43) on a child killed by SIGKILL: after
 *            restore all say Pid -1, poll readable, signals fail with ESRCH,
 *            41 and 42 share an inode that 43 does not, and PIDFD_GET_INFO
 *            gives each its exit status.
 *
 * Refused at checkpoint (the process carries on and verifies its state):
 *   fanotify   a fanotify instance at fd 40 (it must still work: its
 *              fdinfo shows it).
 *   pidfdout   a pidfd at fd 41 on the harness (outside the tree): it must
 *              still name the harness.
 *   inogone    an inotify at fd 40 whose watch 1 is on RESULT.g, unlinked
 *              while still open at fd 42: the watch must still be there.
 *   inoqueued  an inotify at fd 40 with an unread IN_CREATE event queued:
 *              the event must still be there.
 */
#include "wl.h"

#include <limits.h>
#include <poll.h>
#include <sys/fanotify.h>
#include <sys/inotify.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#ifndef P_PIDFD
#define P_PIDFD 3
#endif

static const char *mode;
static char p_dir[PATH_MAX], p_file[PATH_MAX], p_other[PATH_MAX], p_new[PATH_MAX];
static char watch_lines[4096];
static pid_t child, harness;

static void at_fd(int fd, int want)
{
    if (fd < 0)
        wl_die("creating the fd for fd %d", want);
    if (dup2(fd, want) != want)
        wl_die("dup2 to %d", want);
    close(fd);
}

/* The lines of /proc/self/fdinfo/FD starting with `prefix`. */
static void fdinfo_lines(int fd, const char *prefix, char *out, size_t len)
{
    char path[64], line[1024];
    snprintf(path, sizeof(path), "/proc/self/fdinfo/%d", fd);
    FILE *f = fopen(path, "re");
    out[0] = 0;
    if (!f)
        return;
    size_t off = 0;
    while (fgets(line, sizeof(line), f))
        if (!strncmp(line, prefix, strlen(prefix)) && off + strlen(line) < len) {
            strcpy(out + off, line);
            off += strlen(line);
        }
    fclose(f);
}

static void setup_inotify(void)
{
    snprintf(p_dir, sizeof(p_dir), "%s.d", wl_result);
    snprintf(p_file, sizeof(p_file), "%s.f", wl_result);
    snprintf(p_other, sizeof(p_other), "%s.e", wl_result);
    snprintf(p_new, sizeof(p_new), "%s.d/new", wl_result);
    if ((mkdir(p_dir, 0755) && errno != EEXIST) || (mkdir(p_other, 0755) && errno != EEXIST))
        wl_die("mkdir");
    int fd = open(p_file, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        wl_die("open %s", p_file);
    close(fd);
    char held[PATH_MAX + 8];
    snprintf(held, sizeof(held), "%s/held", p_dir);
    at_fd(open(held, O_RDONLY | O_CREAT | O_CLOEXEC, 0644), 44);
    at_fd(inotify_init1(IN_NONBLOCK), 40);
    int w1 = inotify_add_watch(40, p_dir, IN_CREATE | IN_DELETE | IN_OPEN | IN_EXCL_UNLINK);
    int w2 = inotify_add_watch(40, p_other, IN_ATTRIB);
    if (w1 != 1 || w2 != 2 || inotify_rm_watch(40, w2) != 0)
        wl_die("watches 1 and 2: got %d, %d", w1, w2);
    int w3 = inotify_add_watch(40, p_file, IN_MODIFY | IN_ONESHOT);
    if (w3 != 3)
        wl_die("watch 3: got %d", w3);
    char buf[4096];
    while (read(40, buf, sizeof(buf)) > 0) /* wd 2's IN_IGNORED */
        ;
    fdinfo_lines(40, "inotify", watch_lines, sizeof(watch_lines));
}

/* Reads one event (waiting up to 5 s) and checks it. */
static void expect_event(int wd, uint32_t mask, const char *name)
{
    struct pollfd p = {.fd = 40, .events = POLLIN};
    if (poll(&p, 1, 5000) != 1) {
        wl_fail("no event for wd %d mask %#x within 5 s", wd, mask);
        return;
    }
    char buf[sizeof(struct inotify_event) + NAME_MAX + 1]
        __attribute__((aligned(__alignof__(struct inotify_event))));
    /* One event at a time: a buffer too small for two. */
    ssize_t n = read(40, buf, sizeof(struct inotify_event) + (name ? 16 : 0));
    if (n < (ssize_t)sizeof(struct inotify_event)) {
        wl_fail("reading the event for wd %d: %zd (errno %d)", wd, n, errno);
        return;
    }
    struct inotify_event *e = (struct inotify_event *)buf;
    WL_CHECK(e->wd == wd && e->mask == mask, "event wd %d mask %#x, expected wd %d mask %#x",
             e->wd, e->mask, wd, mask);
    if (name)
        WL_CHECK(e->len > 0 && !strcmp(e->name, name), "event name %s, expected %s",
                 e->len ? e->name : "(none)", name);
}

static void verify_inotify(void)
{
    char now[4096];
    fdinfo_lines(40, "inotify", now, sizeof(now));
    WL_CHECK(!strcmp(now, watch_lines), "watches changed: was\n%snow\n%s", watch_lines, now);
    int fl = fcntl(40, F_GETFL);
    WL_CHECK(fl >= 0 && (fl & O_NONBLOCK), "the inotify lost O_NONBLOCK (flags %#x)", fl);
    char buf[4096];
    ssize_t n = read(40, buf, sizeof(buf));
    WL_CHECK(n < 0 && errno == EAGAIN, "the queue is not empty after restore (read %zd)", n);

    int fd = open(p_new, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (fd < 0)
        wl_die("create %s", p_new);
    close(fd);
    expect_event(1, IN_CREATE, "new");
    expect_event(1, IN_OPEN, "new");
    fd = open(p_file, O_WRONLY | O_CLOEXEC);
    if (fd < 0 || write(fd, "x", 1) != 1)
        wl_die("write %s", p_file);
    close(fd);
    expect_event(3, IN_MODIFY, NULL);
    expect_event(3, IN_IGNORED, NULL);
    if (unlink(p_new) != 0)
        wl_die("unlink %s", p_new);
    expect_event(1, IN_DELETE, "new");
    int w4 = inotify_add_watch(40, p_other, IN_ATTRIB);
    WL_CHECK(w4 == 4, "a new watch got wd %d, expected 4", w4);
    WL_CHECK(inotify_rm_watch(40, 1) == 0, "inotify_rm_watch(1): errno %d", errno);
    WL_CHECK(inotify_rm_watch(40, 4) == 0, "inotify_rm_watch(4): errno %d", errno);
    WL_CHECK(inotify_rm_watch(40, 2) != 0 && errno == EINVAL, "wd 2 exists after restore");
}

static void on_usr1(int sig)
{
    (void)sig;
    _exit(7);
}

static void setup_pidfd(void)
{
    /* Blocked until the child's handler is in place: a SIGUSR1 sent early waits. */
    sigset_t usr1, old;
    sigemptyset(&usr1);
    sigaddset(&usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &usr1, &old);
    child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        signal(SIGTERM, SIG_IGN);
        signal(SIGUSR1, on_usr1);
        sigprocmask(SIG_UNBLOCK, &usr1, NULL);
        for (;;)
            pause();
    }
    sigprocmask(SIG_SETMASK, &old, NULL);
    at_fd((int)syscall(SYS_pidfd_open, child, O_NONBLOCK), 41);
}

/* A pidfd on a child that ends `how` (exit 3 or SIGKILL), opened while it
 * lives, at fd `at` (and `at2` if not -1); the child is reaped. */
static void dead_child(int how, int at, int at2)
{
    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        wl_die("pipe");
    pid_t c = fork();
    if (c < 0)
        wl_die("fork");
    if (c == 0) {
        char x;
        close(p[1]);
        if (read(p[0], &x, 1) < 0)
            _exit(2);
        if (how == SIGKILL)
            raise(SIGKILL);
        _exit(3);
    }
    close(p[0]);
    at_fd((int)syscall(SYS_pidfd_open, c, 0), at);
    if (at2 >= 0)
        at_fd((int)syscall(SYS_pidfd_open, c, 0), at2);
    close(p[1]);
    int st;
    if (waitpid(c, &st, 0) != c)
        wl_die("waitpid");
}

/* struct pidfd_info as of Linux 6.15 (PIDFD_INFO_SIZE_VER0). */
struct pidfd_info0 {
    uint64_t mask, cgroupid;
    uint32_t ids[11];
    int32_t exit_code;
};
#define PIDFD_GET_INFO0 _IOWR(0xFF, 11, struct pidfd_info0)

static void verify_dead(int fd, int status)
{
    char info[256];
    fdinfo_lines(fd, "Pid:", info, sizeof(info));
    WL_CHECK(!strcmp(info, "Pid:\t-1\n"), "fd %d: pidfd fdinfo says %s, expected Pid -1", fd, info);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    WL_CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLIN), "fd %d: not readable", fd);
    WL_CHECK(syscall(SYS_pidfd_send_signal, fd, 0, NULL, 0) != 0 && errno == ESRCH,
             "fd %d: pidfd_send_signal did not fail with ESRCH (errno %d)", fd, errno);
    struct pidfd_info0 pi = {.mask = 8 /* PIDFD_INFO_EXIT */};
    WL_CHECK(ioctl(fd, PIDFD_GET_INFO0, &pi) == 0 && (pi.mask & 8) && pi.exit_code == status,
             "fd %d: PIDFD_GET_INFO exit %#x (mask %#llx, errno %d), expected %#x", fd,
             pi.exit_code, (unsigned long long)pi.mask, errno, status);
}

static ino_t ino_of(int fd)
{
    struct stat st;
    return fstat(fd, &st) == 0 ? st.st_ino : 0;
}

static void verify_pidfd(void)
{
    struct pollfd p = {.fd = 41, .events = POLLIN};
    WL_CHECK(poll(&p, 1, 0) == 0, "the pidfd is readable while the child lives");
    int fl = fcntl(41, F_GETFL);
    WL_CHECK(fl >= 0 && (fl & O_NONBLOCK), "the pidfd lost PIDFD_NONBLOCK (flags %#x)", fl);
    char info[256], want[64];
    fdinfo_lines(41, "Pid:", info, sizeof(info));
    snprintf(want, sizeof(want), "Pid:\t%d\n", (int)child);
    WL_CHECK(!strcmp(info, want), "pidfd fdinfo says %s, expected %s", info, want);
    if (syscall(SYS_pidfd_send_signal, 41, SIGUSR1, NULL, 0) != 0) {
        wl_fail("pidfd_send_signal: errno %d", errno);
        kill(child, SIGKILL);
    }
    WL_CHECK(poll(&p, 1, 5000) == 1 && (p.revents & POLLIN), "poll does not report the exit");
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    WL_CHECK(waitid((idtype_t)P_PIDFD, 41, &si, WEXITED) == 0, "waitid(P_PIDFD): errno %d",
             errno);
    WL_CHECK(si.si_pid == child && si.si_code == CLD_EXITED && si.si_status == 7,
             "child %d: code %d status %d, expected exit 7", (int)si.si_pid, si.si_code,
             si.si_status);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "inotify");
    mode = argc > 3 ? argv[3] : "";
    harness = getppid();
    if (!strcmp(mode, "inotify"))
        setup_inotify();
    else if (!strcmp(mode, "pidfd"))
        setup_pidfd();
    else if (!strcmp(mode, "pidfddead")) {
        dead_child(0, 41, 42);
        dead_child(SIGKILL, 43, -1);
    } else if (!strcmp(mode, "inogone")) {
        snprintf(p_file, sizeof(p_file), "%s.g", wl_result);
        at_fd(open(p_file, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644), 42);
        at_fd(inotify_init1(IN_NONBLOCK), 40);
        if (inotify_add_watch(40, p_file, IN_MODIFY) != 1 || unlink(p_file) != 0)
            wl_die("watch and unlink %s", p_file);
    } else if (!strcmp(mode, "inoqueued")) {
        snprintf(p_dir, sizeof(p_dir), "%s.d", wl_result);
        snprintf(p_new, sizeof(p_new), "%s.d/new", wl_result);
        if (mkdir(p_dir, 0755) && errno != EEXIST)
            wl_die("mkdir");
        at_fd(inotify_init1(IN_NONBLOCK), 40);
        if (inotify_add_watch(40, p_dir, IN_CREATE) != 1)
            wl_die("watch %s", p_dir);
        int fd = open(p_new, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            wl_die("create %s", p_new);
        close(fd);
    } else if (!strcmp(mode, "fanotify"))
        at_fd(fanotify_init(FAN_CLASS_NOTIF | FAN_CLOEXEC, O_RDONLY), 40);
    else if (!strcmp(mode, "pidfdout"))
        at_fd((int)syscall(SYS_pidfd_open, harness, 0), 41);
    else
        wl_die("unknown mode %s", mode);
    wl_ready();
    wl_wait_term();
    wl_verify_common();
    if (!strcmp(mode, "inotify"))
        verify_inotify();
    else if (!strcmp(mode, "pidfd"))
        verify_pidfd();
    else if (!strcmp(mode, "pidfddead")) {
        verify_dead(41, 3 << 8);
        verify_dead(42, 3 << 8);
        verify_dead(43, SIGKILL);
        WL_CHECK(ino_of(41) == ino_of(42) && ino_of(41) != ino_of(43),
                 "pidfd inodes %lu %lu %lu: 41 and 42 must match, 43 differ",
                 (unsigned long)ino_of(41), (unsigned long)ino_of(42), (unsigned long)ino_of(43));
    } else if (!strcmp(mode, "inogone")) {
        if (write(42, "x", 1) != 1)
            wl_die("write");
        expect_event(1, IN_MODIFY, NULL);
    } else if (!strcmp(mode, "inoqueued")) {
        expect_event(1, IN_CREATE, "new");
        unlink(p_new);
    } else if (!strcmp(mode, "fanotify")) {
        char info[256];
        fdinfo_lines(40, "flags:", info, sizeof(info));
        WL_CHECK(info[0] != 0, "the fanotify fd is gone");
    } else {
        char info[256], want[64];
        fdinfo_lines(41, "Pid:", info, sizeof(info));
        snprintf(want, sizeof(want), "Pid:\t%d\n", (int)harness);
        WL_CHECK(!strcmp(info, want), "pidfd fdinfo says %s, expected %s", info, want);
    }
    wl_finish();
}
