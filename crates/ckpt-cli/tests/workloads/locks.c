/*
 * File locks (crates/ckpt-cli/tests/restore_locks.rs). Modes (argv[3]):
 *   hold     a POSIX write lock on bytes 0-99 and a read lock on 200-EOF of
 *            posix.lck, an OFD write lock on bytes 10-19 of ofd.lck, and
 *            flock(LOCK_EX) on flock.lck (files in the cwd); posix.lck is
 *            also mapped. Verification
 *            checks each lock from a second process (a child forked then):
 *            F_GETLK / F_OFD_GETLK report the conflict with this pid and
 *            range, flock(LOCK_EX|LOCK_NB) fails with EWOULDBLOCK.
 *   inherit  flock(LOCK_EX) on shared.lck, then a child inherits the
 *            description: after the parent closes its fd the lock is still
 *            held (the child's fd is the same description), and once the
 *            child exits it is free.
 *   lease    a read lease (F_SETLEASE) on lease.lck: refused at checkpoint;
 *            verification checks the lease is still there.
 *   unlinked flock(LOCK_EX) on a file then unlinked: refused at checkpoint
 *            (restart makes a new file); the lock is still held.
 *   waiter   flock(LOCK_EX) and a POSIX write lock on wait.lck; one child
 *            blocks in flock(LOCK_EX), another in F_SETLKW on it. Waiters
 *            are not locks: after restart they ask again, and get the
 *            locks once the parent releases them.
 *   posixshared  a POSIX lock in a process whose child shares its fd table
 *            (clone CLONE_FILES): refused at checkpoint.
 */
#include "wl.h"
#include <sched.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static const char *mode;
static int fd_posix = -1, fd_ofd = -1, fd_flock = -1;
static pid_t child = -1;
static char *map;

static int xopen(const char *path, int flags)
{
    int fd = open(path, flags | O_CLOEXEC, 0644);
    if (fd < 0)
        wl_die("open(%s)", path);
    return fd;
}

/* A file of 300 bytes. */
static int make_file(const char *path)
{
    int fd = xopen(path, O_RDWR | O_CREAT | O_TRUNC);
    char buf[300];
    memset(buf, 'x', sizeof(buf));
    if (write(fd, buf, sizeof(buf)) != (ssize_t)sizeof(buf))
        wl_die("write(%s)", path);
    return fd;
}

static int lock(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    return fcntl(fd, cmd, &fl);
}

/* The lock F_GETLK-like `cmd` reports for a `type` lock on start/len. */
static struct flock probe(int fd, int cmd, short type, off_t start, off_t len)
{
    struct flock fl = {.l_type = type, .l_whence = SEEK_SET, .l_start = start, .l_len = len};
    if (fcntl(fd, cmd, &fl) != 0) {
        fprintf(stderr, "locks: F_GETLK: %s\n", strerror(errno));
        fl.l_type = -1;
    }
    return fl;
}

#define EXPECT_LOCK(fl, type, pid, start, len, what)                                               \
    WL_CHECK((fl).l_type == (type) && (fl).l_pid == (pid) && (fl).l_start == (start) &&           \
                 (fl).l_len == (len),                                                              \
             "%s: got type %d pid %d start %lld len %lld, want type %d pid %d start %d len %d",   \
             what, (fl).l_type, (int)(fl).l_pid, (long long)(fl).l_start, (long long)(fl).l_len, \
             type, (int)(pid), start, len)

/* Whether a fresh description of `path` can take flock `op` right now. */
static int flock_free(const char *path, int op)
{
    int fd = xopen(path, O_RDONLY);
    int r = flock(fd, op | LOCK_NB);
    int e = errno;
    close(fd);
    if (r != 0 && e != EWOULDBLOCK)
        wl_fail("flock(%s): unexpected errno %d", path, e);
    return r == 0;
}

static void setup_hold(void)
{
    fd_posix = make_file("posix.lck");
    fd_ofd = make_file("ofd.lck");
    fd_flock = make_file("flock.lck");
    if (lock(fd_posix, F_SETLK, F_WRLCK, 0, 100) != 0 || lock(fd_posix, F_SETLK, F_RDLCK, 200, 0))
        wl_die("F_SETLK posix.lck");
    if (lock(fd_ofd, F_OFD_SETLK, F_WRLCK, 10, 10) != 0)
        wl_die("F_OFD_SETLK ofd.lck");
    if (flock(fd_flock, LOCK_EX | LOCK_NB) != 0)
        wl_die("flock flock.lck");
    /* Mapped too: restart opens and closes a mapped file in the process,
     * which drops its POSIX locks on it. */
    map = mmap(NULL, 300, PROT_READ | PROT_WRITE, MAP_SHARED, fd_posix, 0);
    if (map == MAP_FAILED)
        wl_die("mmap posix.lck");
}

/* In a second process: every lock of `hold` is held by `owner`. */
static void check_hold_from_outside(pid_t owner)
{
    int p = xopen("posix.lck", O_RDWR);
    struct flock fl = probe(p, F_GETLK, F_WRLCK, 0, 100);
    EXPECT_LOCK(fl, F_WRLCK, owner, 0, 100, "posix.lck write lock 0-99");
    fl = probe(p, F_GETLK, F_WRLCK, 100, 100);
    WL_CHECK(fl.l_type == F_UNLCK, "posix.lck bytes 100-199 are locked (type %d)", fl.l_type);
    fl = probe(p, F_GETLK, F_WRLCK, 200, 0);
    EXPECT_LOCK(fl, F_RDLCK, owner, 200, 0, "posix.lck read lock 200-EOF");
    fl = probe(p, F_GETLK, F_RDLCK, 250, 10);
    WL_CHECK(fl.l_type == F_UNLCK, "a read lock conflicts with the read lock (type %d)", fl.l_type);
    WL_CHECK(lock(p, F_SETLK, F_WRLCK, 50, 1) != 0 && (errno == EAGAIN || errno == EACCES),
             "F_SETLK on a byte of the write lock did not fail with EAGAIN");
    close(p);

    int o = xopen("ofd.lck", O_RDWR);
    fl = probe(o, F_OFD_GETLK, F_RDLCK, 0, 0);
    EXPECT_LOCK(fl, F_WRLCK, -1, 10, 10, "ofd.lck OFD write lock 10-19");
    /* A POSIX lock conflicts with it too. */
    fl = probe(o, F_GETLK, F_RDLCK, 15, 1);
    WL_CHECK(fl.l_type == F_WRLCK && fl.l_pid == -1, "F_GETLK on ofd.lck: type %d pid %d",
             fl.l_type, (int)fl.l_pid);
    close(o);

    WL_CHECK(!flock_free("flock.lck", LOCK_SH), "flock.lck can be flock'ed: not held");
}

static void verify_hold(void)
{
    /* The OFD and flock locks belong to descriptions: a fresh description
     * of this very process conflicts with them. */
    int o = xopen("ofd.lck", O_RDWR);
    struct flock fl = probe(o, F_OFD_GETLK, F_WRLCK, 0, 0);
    EXPECT_LOCK(fl, F_WRLCK, -1, 10, 10, "ofd.lck OFD lock, from a fresh description");
    close(o);
    WL_CHECK(!flock_free("flock.lck", LOCK_EX), "flock.lck is free to a fresh description");

    pid_t me = getpid();
    pid_t c = fork();
    if (c < 0)
        wl_die("fork");
    if (c == 0) {
        check_hold_from_outside(me);
        _exit(wl_failures == 0 ? 0 : 1);
    }
    int st;
    WL_CHECK(waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "the checker child found the locks wrong (status %d, see log)", st);

    WL_CHECK(map[0] == 'x' && map[299] == 'x', "the mapping of posix.lck reads wrong");
    /* Our own POSIX locks: unlocking frees the range for others. */
    if (lock(fd_posix, F_SETLK, F_UNLCK, 0, 0) != 0)
        wl_fail("F_UNLCK posix.lck: %s", strerror(errno));
    if (flock(fd_flock, LOCK_UN) != 0)
        wl_fail("LOCK_UN flock.lck: %s", strerror(errno));
    WL_CHECK(flock_free("flock.lck", LOCK_EX), "flock.lck still locked after LOCK_UN");
}

static void setup_inherit(void)
{
    fd_flock = make_file("shared.lck");
    if (flock(fd_flock, LOCK_EX | LOCK_NB) != 0)
        wl_die("flock shared.lck");
    child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        wl_wait_term();
        /* Our fd is the locked description: a fresh one cannot lock. */
        _exit(flock_free("shared.lck", LOCK_SH) ? 1 : 0);
    }
}

static void verify_inherit(void)
{
    WL_CHECK(!flock_free("shared.lck", LOCK_SH), "shared.lck is not locked");
    close(fd_flock);
    WL_CHECK(!flock_free("shared.lck", LOCK_SH),
             "shared.lck is free once the parent closed its fd: the child's fd is not the "
             "locked description");
    int st;
    kill(child, SIGTERM);
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "child: status %d (1: its own description is not locked)", st);
    WL_CHECK(flock_free("shared.lck", LOCK_EX), "shared.lck still locked once every holder is gone");
}

static void setup_lease(void)
{
    int w = make_file("lease.lck");
    close(w);
    fd_flock = xopen("lease.lck", O_RDONLY);
    if (fcntl(fd_flock, F_SETLEASE, F_RDLCK) != 0)
        wl_die("F_SETLEASE lease.lck");
}

static void setup_unlinked(void)
{
    fd_flock = make_file("gone.lck");
    if (flock(fd_flock, LOCK_EX | LOCK_NB) != 0)
        wl_die("flock gone.lck");
    if (unlink("gone.lck") != 0)
        wl_die("unlink gone.lck");
}

static pid_t waiters[2];

/* Whether /proc/locks shows `n` waiters on the inode of `fd`. */
static int waiting(int fd, int n)
{
    struct stat st;
    char want[64], *text = wl_read_file("/proc/locks", NULL);
    int found = 0;
    if (fstat(fd, &st) != 0 || !text)
        wl_die("fstat / read /proc/locks");
    snprintf(want, sizeof(want), ":%llu ", (unsigned long long)st.st_ino);
    for (char *l = strtok(text, "\n"); l; l = strtok(NULL, "\n"))
        if (strstr(l, "->") && strstr(l, want))
            found++;
    free(text);
    return found == n;
}

static void setup_waiter(void)
{
    fd_flock = make_file("wait.lck");
    if (flock(fd_flock, LOCK_EX | LOCK_NB) != 0 || lock(fd_flock, F_SETLK, F_WRLCK, 0, 0) != 0)
        wl_die("lock wait.lck");
    for (int i = 0; i < 2; i++) {
        waiters[i] = fork();
        if (waiters[i] < 0)
            wl_die("fork");
        if (waiters[i] == 0) {
            int fd = xopen("wait.lck", O_RDWR);
            int r = i == 0 ? flock(fd, LOCK_EX) : lock(fd, F_SETLKW, F_WRLCK, 0, 0);
            if (r != 0)
                fprintf(stderr, "locks: waiter %d: %s\n", i, strerror(errno));
            _exit(r == 0 ? 0 : 1);
        }
    }
    double deadline = wl_monotonic() + 10;
    while (!waiting(fd_flock, 2))
        if (wl_monotonic() > deadline)
            wl_die("the children do not wait for the locks of wait.lck");
        else
            wl_sleep_ns(1000000);
}

static void verify_waiter(void)
{
    /* The restored waiters block again once they run: they may not have
     * been scheduled yet when we are. */
    double deadline = wl_monotonic() + 10;
    while (!waiting(fd_flock, 2) && wl_monotonic() < deadline)
        wl_sleep_ns(1000000);
    WL_CHECK(waiting(fd_flock, 2), "/proc/locks does not show the two waiters on wait.lck");
    if (flock(fd_flock, LOCK_UN) != 0 || lock(fd_flock, F_SETLK, F_UNLCK, 0, 0) != 0)
        wl_fail("unlock wait.lck: %s", strerror(errno));
    for (int i = 0; i < 2; i++) {
        int st;
        WL_CHECK(waitpid(waiters[i], &st, 0) == waiters[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                 "waiter %d: status %d", i, st);
    }
}

static void setup_posixshared(void)
{
    fd_posix = make_file("posix.lck");
    if (lock(fd_posix, F_SETLK, F_WRLCK, 0, 0) != 0)
        wl_die("F_SETLK posix.lck");
    child = (pid_t)syscall(SYS_clone, CLONE_FILES | SIGCHLD, NULL, NULL, NULL, NULL);
    if (child < 0)
        wl_die("clone(CLONE_FILES)");
    if (child == 0) {
        wl_wait_term();
        _exit(0);
    }
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "locks");
    mode = argc > 3 ? argv[3] : "";
    if (!strcmp(mode, "hold"))
        setup_hold();
    else if (!strcmp(mode, "inherit"))
        setup_inherit();
    else if (!strcmp(mode, "lease"))
        setup_lease();
    else if (!strcmp(mode, "posixshared"))
        setup_posixshared();
    else if (!strcmp(mode, "unlinked"))
        setup_unlinked();
    else if (!strcmp(mode, "waiter"))
        setup_waiter();
    else
        wl_die("unknown mode %s", mode);
    wl_ready();
    wl_wait_term();
    wl_verify_common();
    if (!strcmp(mode, "hold"))
        verify_hold();
    else if (!strcmp(mode, "inherit"))
        verify_inherit();
    else if (!strcmp(mode, "waiter"))
        verify_waiter();
    else if (!strcmp(mode, "lease"))
        WL_CHECK(fcntl(fd_flock, F_GETLEASE) == F_RDLCK, "the read lease is gone");
    else if (!strcmp(mode, "unlinked")) {
        char p[64];
        snprintf(p, sizeof(p), "/proc/self/fd/%d", fd_flock);
        WL_CHECK(!flock_free(p, LOCK_SH), "the flock on the unlinked file is gone");
    }
    else if (!strcmp(mode, "posixshared")) {
        struct flock fl = {.l_type = F_WRLCK, .l_whence = SEEK_SET};
        int st;
        kill(child, SIGTERM);
        WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                 "child status %d", st);
        pid_t me = getpid(), c = fork();
        if (c == 0) {
            int p = open("posix.lck", O_RDWR);
            _exit(p >= 0 && fcntl(p, F_GETLK, &fl) == 0 && fl.l_type == F_WRLCK && fl.l_pid == me
                      ? 0
                      : 1);
        }
        WL_CHECK(c > 0 && waitpid(c, &st, 0) == c && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                 "the POSIX lock is not held any more");
    }
    wl_finish();
}
