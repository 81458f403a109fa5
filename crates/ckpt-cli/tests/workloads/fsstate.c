/*
 * fsstate: file state beyond offsets and flags, one case per argv[3].
 *
 * Restored (each verifies itself on SIGTERM):
 *   unlinked  one file opened twice (O_WRONLY by its name, O_RDONLY by a
 *             hard link), both names removed, chown 1234:5678, mode 06640,
 *             mtime 123456.789: after restore both fds name one inode (a
 *             write through one is read through the other) with that owner,
 *             mode and mtime. Plus an O_TMPFILE file with content, an
 *             O_PATH fd (still O_PATH), and a FIFO (mode 0640) opened twice,
 *             with 5 bytes in it, whose name was removed: one FIFO again,
 *             its bytes and mode intact, its name still free.
 *   chroot    a child chroots into RESULT.root, keeping its cwd outside the
 *             root, and holds RESULT.root/inside open: after restore it still
 *             sees /inside through the root, its cwd is the same directory
 *             and the held file reads the same; it reports to the parent
 *             through a pipe.
 *   proc      the parent holds /proc/CHILD/stat and /proc/self/status open:
 *             after restore they describe the child and the parent.
 *   fown      a pipe's read end with F_SETOWN getpid(), F_SETSIG SIGUSR1 and
 *             O_ASYNC: after restore all three read back, and a write into
 *             the pipe raises SIGUSR1.
 *   cwdgone   its working directory (mode 0751, owner 4321:8765), also open
 *             as an fd, was removed: after restore it is in a removed
 *             directory of that name, mode and owner, the fd is that same
 *             directory, and the name is free.
 *   fdtable   a child made by clone(CLONE_FILES): after restore a file the
 *             parent opens at fd 200 is seen by the child; /proc/self/status
 *             opened before the clone (so in both) is still the parent's.
 *
 * Refused at checkpoint (the process carries on and verifies its state):
 *   pty       holds a pseudo-terminal pair (master and slave).
 *   foreign   holds /proc/PPID/stat (the harness, outside the tree; /proc/1
 *             of init alone would be accepted).
 *   ownerout  a pipe whose F_SETOWN owner is the harness (outside the tree).
 *   rootgone  a child's root directory (chroot) was removed.
 *   fdsibling two children share one fd table (clone CLONE_FILES) that
 *             their parent no longer uses (unshare).
 */
#include "wl.h"

#include <limits.h>
#include <sched.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

static const char *mode;
static char p_a[PATH_MAX], p_b[PATH_MAX], p_dir[PATH_MAX];
static int fd_w, fd_r, fd_tmp, fd_path, fd_x, fd_y, fd_fifo_rw, fd_fifo_r;
static char p_fifo[PATH_MAX];
static pid_t child;
static int report[2];
static volatile sig_atomic_t usr1;

static void on_usr1(int sig)
{
    (void)sig;
    usr1++;
}

static int xopen(const char *path, int flags)
{
    int fd = open(path, flags, 0644);
    if (fd < 0)
        wl_die("open(%s)", path);
    return fd;
}

static void setup_unlinked(void)
{
    snprintf(p_a, sizeof(p_a), "%s.a", wl_result);
    snprintf(p_b, sizeof(p_b), "%s.b", wl_result);
    unlink(p_b);
    fd_w = xopen(p_a, O_WRONLY | O_CREAT | O_TRUNC);
    if (write(fd_w, "0123456789", 10) != 10)
        wl_die("write");
    if (link(p_a, p_b) != 0)
        wl_die("link");
    fd_r = xopen(p_b, O_RDONLY);
    if (unlink(p_a) != 0 || unlink(p_b) != 0)
        wl_die("unlink");
    if (fchown(fd_w, 1234, 5678) != 0 || fchmod(fd_w, 06640) != 0)
        wl_die("fchown/fchmod");
    struct timespec ts[2] = {{1000, 5}, {123456, 789}};
    if (futimens(fd_w, ts) != 0)
        wl_die("futimens");

    char dir[PATH_MAX];
    snprintf(dir, sizeof(dir), "%s", wl_result);
    *strrchr(dir, '/') = 0;
    fd_tmp = open(dir, O_TMPFILE | O_RDWR, 0600);
    if (fd_tmp < 0)
        wl_die("O_TMPFILE in %s", dir);
    if (write(fd_tmp, "tmpfile", 7) != 7)
        wl_die("write tmpfile");

    snprintf(p_fifo, sizeof(p_fifo), "%s.fifo", wl_result);
    unlink(p_fifo);
    if (mkfifo(p_fifo, 0600) != 0 || chmod(p_fifo, 0640) != 0)
        wl_die("mkfifo %s", p_fifo);
    fd_fifo_rw = xopen(p_fifo, O_RDWR);
    fd_fifo_r = xopen(p_fifo, O_RDONLY | O_NONBLOCK);
    if (write(fd_fifo_rw, "fifo!", 5) != 5)
        wl_die("write fifo");
    if (unlink(p_fifo) != 0)
        wl_die("unlink fifo");

    snprintf(p_dir, sizeof(p_dir), "%s.path", wl_result);
    close(xopen(p_dir, O_WRONLY | O_CREAT));
    fd_path = open(p_dir, O_PATH);
    if (fd_path < 0)
        wl_die("O_PATH");
}

static void verify_unlinked(void)
{
    struct stat a, b;
    if (fstat(fd_w, &a) != 0 || fstat(fd_r, &b) != 0) {
        wl_fail("fstat: %s", strerror(errno));
        return;
    }
    WL_CHECK(a.st_dev == b.st_dev && a.st_ino == b.st_ino,
             "the two descriptions name two inodes after restore");
    WL_CHECK(a.st_nlink == 0, "nlink is %ld", (long)a.st_nlink);
    WL_CHECK(a.st_uid == 1234 && a.st_gid == 5678, "owner is %d:%d", (int)a.st_uid, (int)a.st_gid);
    WL_CHECK((a.st_mode & 07777) == 06640, "mode is %o", (unsigned)(a.st_mode & 07777));
    WL_CHECK(a.st_mtim.tv_sec == 123456 && a.st_mtim.tv_nsec == 789, "mtime is %ld.%09ld",
             (long)a.st_mtim.tv_sec, (long)a.st_mtim.tv_nsec);
    WL_CHECK(a.st_size == 10, "size is %ld", (long)a.st_size);
    if (write(fd_w, "ABC", 3) != 3)
        wl_fail("write: %s", strerror(errno));
    char buf[32] = {0};
    ssize_t n = pread(fd_r, buf, sizeof(buf) - 1, 0);
    WL_CHECK(n == 13 && strcmp(buf, "0123456789ABC") == 0, "read back %zd bytes \"%s\"", n, buf);

    memset(buf, 0, sizeof(buf));
    n = pread(fd_tmp, buf, sizeof(buf) - 1, 0);
    WL_CHECK(n == 7 && strcmp(buf, "tmpfile") == 0, "O_TMPFILE file reads \"%s\"", buf);
    WL_CHECK((fcntl(fd_tmp, F_GETFL) & O_ACCMODE) == O_RDWR, "O_TMPFILE file is not O_RDWR");
    WL_CHECK(lseek(fd_tmp, 0, SEEK_CUR) == 7, "O_TMPFILE offset changed");

    struct stat f1, f2;
    WL_CHECK(fstat(fd_fifo_rw, &f1) == 0 && fstat(fd_fifo_r, &f2) == 0 && f1.st_ino == f2.st_ino &&
                 S_ISFIFO(f1.st_mode) && (f1.st_mode & 07777) == 0640 && f1.st_nlink == 0,
             "removed FIFO: two inodes, or mode %o nlink %ld", (unsigned)f1.st_mode,
             (long)f1.st_nlink);
    WL_CHECK(access(p_fifo, F_OK) != 0, "the removed FIFO's name exists again");
    memset(buf, 0, sizeof(buf));
    WL_CHECK(read(fd_fifo_r, buf, sizeof(buf)) == 5 && !strcmp(buf, "fifo!"),
             "removed FIFO holds \"%s\"", buf);
    WL_CHECK(write(fd_fifo_rw, "z", 1) == 1 && read(fd_fifo_r, buf, 1) == 1 && buf[0] == 'z',
             "removed FIFO: a write is not read through the other description");

    int fl = fcntl(fd_path, F_GETFL);
    WL_CHECK(fl >= 0 && (fl & O_PATH), "O_PATH fd lost O_PATH (flags %o)", fl);
    struct stat p, q;
    WL_CHECK(fstat(fd_path, &p) == 0 && stat(p_dir, &q) == 0 && p.st_ino == q.st_ino,
             "O_PATH fd names another file");
}

static void setup_chroot(void)
{
    char root[PATH_MAX], inside[PATH_MAX];
    snprintf(root, sizeof(root), "%s.root", wl_result);
    snprintf(inside, sizeof(inside), "%s.root/inside", wl_result);
    if (mkdir(root, 0755) != 0 && errno != EEXIST)
        wl_die("mkdir %s", root);
    int f = xopen(inside, O_WRONLY | O_CREAT | O_TRUNC);
    if (write(f, "in the root", 11) != 11)
        wl_die("write inside");
    close(f);
    if (pipe(report) != 0)
        wl_die("pipe");
    child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        close(report[0]);
        struct stat cwd_before;
        if (stat(".", &cwd_before) != 0)
            _exit(2);
        int held = xopen(inside, O_RDONLY);
        if (chroot(root) != 0)
            _exit(2);
        /* Ready only once chrooted: the parent waits for this byte. */
        if (write(report[1], "c", 1) != 1)
            _exit(2);
        wl_wait_term();
        char res = 0, buf[32] = {0};
        struct stat st;
        int fd = open("/inside", O_RDONLY);
        if (fd < 0 || read(fd, buf, sizeof(buf)) != 11 || strcmp(buf, "in the root") != 0)
            res |= 1;
        memset(buf, 0, sizeof(buf));
        if (pread(held, buf, sizeof(buf), 0) != 11 || strcmp(buf, "in the root") != 0)
            res |= 2;
        if (stat(".", &st) != 0 || st.st_ino != cwd_before.st_ino || st.st_dev != cwd_before.st_dev)
            res |= 4;
        if (open(inside, O_RDONLY) >= 0) /* the outside path is not visible */
            res |= 8;
        if (write(report[1], &res, 1) != 1)
            _exit(3);
        _exit(0);
    }
    close(report[1]);
    char c;
    if (read(report[0], &c, 1) != 1)
        wl_die("chroot child did not start");
}

static void verify_child_report(void)
{
    kill(child, SIGTERM);
    char res = -1;
    WL_CHECK(read(report[0], &res, 1) == 1, "no report from the child");
    WL_CHECK(res == 0, "child's checks failed: %d (1 /inside, 2 held file, 4 cwd, 8 escaped)", res);
    int st;
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "child exit status %d", st);
}

static void setup_proc(void)
{
    child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        wl_wait_term();
        _exit(0);
    }
    char p[64];
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)child);
    fd_x = xopen(p, O_RDONLY);
    fd_y = xopen("/proc/self/status", O_RDONLY);
}

static void verify_proc(void)
{
    char buf[4096] = {0}, want[64];
    ssize_t n = pread(fd_x, buf, sizeof(buf) - 1, 0);
    snprintf(want, sizeof(want), "%d (fsstate) ", (int)child);
    WL_CHECK(n > 0 && strncmp(buf, want, strlen(want)) == 0, "/proc/CHILD/stat reads \"%.40s\"",
             buf);
    memset(buf, 0, sizeof(buf));
    n = pread(fd_y, buf, sizeof(buf) - 1, 0);
    snprintf(want, sizeof(want), "\nPid:\t%d\n", (int)getpid());
    WL_CHECK(n > 0 && strstr(buf, want), "/proc/self/status is not about pid %d", (int)getpid());
    kill(child, SIGTERM);
    int st;
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "child exit status %d", st);
}

static void setup_fown(pid_t owner)
{
    int p[2];
    if (pipe(p) != 0)
        wl_die("pipe");
    fd_x = p[0];
    fd_y = p[1];
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);
    if (fcntl(fd_x, F_SETOWN, owner) != 0)
        wl_die("F_SETOWN");
    if (owner != getpid())
        return; /* no signal may reach the harness */
    if (fcntl(fd_x, F_SETSIG, SIGUSR1) != 0 ||
        fcntl(fd_x, F_SETFL, fcntl(fd_x, F_GETFL) | O_ASYNC) != 0)
        wl_die("fcntl owner");
}

static void verify_fown(void)
{
    WL_CHECK(fcntl(fd_x, F_GETOWN) == getpid(), "F_GETOWN is %d", fcntl(fd_x, F_GETOWN));
    WL_CHECK(fcntl(fd_x, F_GETSIG) == SIGUSR1, "F_GETSIG is %d", fcntl(fd_x, F_GETSIG));
    WL_CHECK(fcntl(fd_x, F_GETFL) & O_ASYNC, "O_ASYNC lost");
    WL_CHECK(fcntl(fd_y, F_GETOWN) == 0, "the write end got an owner");
    if (write(fd_y, "x", 1) != 1)
        wl_fail("write: %s", strerror(errno));
    double end = wl_monotonic() + 10;
    while (!usr1 && wl_monotonic() < end)
        wl_sleep_ns(1000 * 1000);
    WL_CHECK(usr1 == 1, "SIGUSR1 raised %d times by a write into the pipe", (int)usr1);
    char c;
    WL_CHECK(read(fd_x, &c, 1) == 1 && c == 'x', "pipe lost the byte");
}

static void setup_fdtable(void)
{
    /* A /proc file in the shared table: reopened once, for both. */
    fd_y = xopen("/proc/self/status", O_RDONLY);
    /* Without CLONE_VM and a NULL stack, clone works like fork. */
    child = (pid_t)syscall(SYS_clone, CLONE_FILES | SIGCHLD, NULL, NULL, NULL, NULL);
    if (child < 0)
        wl_die("clone(CLONE_FILES)");
    if (child == 0) {
        wl_wait_term();
        /* The parent opened fd 200 after the restore, in our shared table. */
        _exit(fcntl(200, F_GETFD) >= 0 ? 0 : 1);
    }
}

static void verify_fdtable(void)
{
    char buf[4096] = {0}, want[64];
    ssize_t n = pread(fd_y, buf, sizeof(buf) - 1, 0);
    snprintf(want, sizeof(want), "\nPid:\t%d\n", (int)getpid());
    WL_CHECK(n > 0 && strstr(buf, want), "/proc/self/status is not about pid %d", (int)getpid());
    int fd = xopen("/dev/null", O_RDONLY);
    if (dup2(fd, 200) != 200)
        wl_fail("dup2 200: %s", strerror(errno));
    close(fd);
    kill(child, SIGTERM);
    int st;
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "the CLONE_FILES child does not see fd 200 of its parent (status %d)", st);
    close(200);
}

static void setup_pty(void)
{
    fd_x = posix_openpt(O_RDWR | O_NOCTTY);
    if (fd_x < 0 || grantpt(fd_x) != 0 || unlockpt(fd_x) != 0)
        wl_die("posix_openpt");
    fd_y = xopen(ptsname(fd_x), O_RDWR | O_NOCTTY);
}

static void verify_pty(void)
{
    char buf[8] = {0};
    WL_CHECK(write(fd_x, "hi\n", 3) == 3, "write to the master");
    WL_CHECK(read(fd_y, buf, sizeof(buf)) == 3 && strcmp(buf, "hi\n") == 0,
             "the slave read \"%s\"", buf);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "fsstate");
    mode = argc > 3 ? argv[3] : "";
    char gone[PATH_MAX];
    if (!strcmp(mode, "unlinked"))
        setup_unlinked();
    else if (!strcmp(mode, "chroot"))
        setup_chroot();
    else if (!strcmp(mode, "proc"))
        setup_proc();
    else if (!strcmp(mode, "fown"))
        setup_fown(getpid());
    else if (!strcmp(mode, "ownerout"))
        setup_fown(getppid());
    else if (!strcmp(mode, "fdtable"))
        setup_fdtable();
    else if (!strcmp(mode, "pty"))
        setup_pty();
    else if (!strcmp(mode, "foreign")) {
        char p[64];
        snprintf(p, sizeof(p), "/proc/%d/stat", (int)getppid());
        fd_x = xopen(p, O_RDONLY);
        fd_y = xopen("/proc/1/stat", O_RDONLY); /* init: would be fine */
    }
    else if (!strcmp(mode, "cwdgone")) {
        snprintf(gone, sizeof(gone), "%s.gone", wl_result);
        if (mkdir(gone, 0700) != 0 || chmod(gone, 0751) != 0 || chown(gone, 4321, 8765) != 0 ||
            chdir(gone) != 0)
            wl_die("mkdir/chdir %s", gone);
        fd_x = xopen(gone, O_RDONLY | O_DIRECTORY);
        if (rmdir(gone) != 0)
            wl_die("rmdir %s", gone);
    } else if (!strcmp(mode, "fdsibling")) {
        /* Two children on one fd table that is no longer the parent's. */
        for (int i = 0; i < 2; i++) {
            pid_t c = (pid_t)syscall(SYS_clone, CLONE_FILES | SIGCHLD, NULL, NULL, NULL, NULL);
            if (c < 0)
                wl_die("clone(CLONE_FILES)");
            if (c == 0) {
                wl_wait_term();
                _exit(0);
            }
            if (i == 0)
                child = c;
            else
                fd_y = c; /* the second child's pid */
        }
        if (unshare(CLONE_FILES) != 0)
            wl_die("unshare(CLONE_FILES)");
    } else if (!strcmp(mode, "rootgone")) {
        /* A child chroots into a directory that is then removed. */
        snprintf(gone, sizeof(gone), "%s.root", wl_result);
        if (pipe(report) != 0)
            wl_die("pipe");
        child = fork();
        if (child < 0)
            wl_die("fork");
        if (child == 0) {
            if (mkdir(gone, 0700) != 0 || chdir(gone) != 0 || rmdir(gone) != 0 ||
                chroot(".") != 0 || write(report[1], "r", 1) != 1)
                _exit(2);
            wl_wait_term();
            _exit(0);
        }
        char c;
        if (read(report[0], &c, 1) != 1)
            wl_die("the child did not chroot into a removed directory");
    } else
        wl_die("unknown mode %s", mode);
    wl_ready();
    wl_wait_term();
    if (!strcmp(mode, "unlinked"))
        verify_unlinked();
    else if (!strcmp(mode, "chroot"))
        verify_child_report();
    else if (!strcmp(mode, "proc"))
        verify_proc();
    else if (!strcmp(mode, "fown"))
        verify_fown();
    else if (!strcmp(mode, "ownerout"))
        WL_CHECK(fcntl(fd_x, F_GETOWN) == getppid(), "owner changed");
    else if (!strcmp(mode, "fdtable"))
        verify_fdtable();
    else if (!strcmp(mode, "pty"))
        verify_pty();
    else if (!strcmp(mode, "cwdgone")) {
        struct stat st;
        WL_CHECK(stat(".", &st) == 0 && st.st_nlink == 0, "cwd is no longer a removed directory");
        WL_CHECK((st.st_mode & 07777) == 0751 && st.st_uid == 4321 && st.st_gid == 8765,
                 "removed cwd has mode %o owner %d:%d", (unsigned)(st.st_mode & 07777),
                 (int)st.st_uid, (int)st.st_gid);
        char link[PATH_MAX + 16] = {0}, want[PATH_MAX + 16];
        snprintf(want, sizeof(want), "%s (deleted)", gone);
        WL_CHECK(readlink("/proc/self/cwd", link, sizeof(link) - 1) > 0 && !strcmp(link, want),
                 "cwd reads \"%s\"", link);
        WL_CHECK(access(gone, F_OK) != 0, "the removed cwd exists again");
        struct stat d;
        WL_CHECK(fstat(fd_x, &d) == 0 && d.st_ino == st.st_ino && d.st_dev == st.st_dev,
                 "the fd of the removed directory is not the cwd any more");
    }
    else if (!strcmp(mode, "fdsibling")) {
        pid_t kids[2] = {child, (pid_t)fd_y};
        for (int i = 0; i < 2; i++) {
            int st;
            kill(kids[i], SIGTERM);
            WL_CHECK(waitpid(kids[i], &st, 0) == kids[i] && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                     "child %d exit status %d", (int)kids[i], st);
        }
    } else if (!strcmp(mode, "rootgone")) {
        kill(child, SIGTERM);
        int st;
        WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
                 "child exit status %d", st);
    }
    wl_verify_common();
    wl_finish();
}
