/*
 * manyfds: a table of many fds (argv[4], default 10000), opened in order
 * from fd 3: even ones a file of its own description at offset i, odd ones
 * /dev/null. Restoring it must not need twice as many fd numbers (the soft
 * limit is raised to N + 64 only; the restorer's must fit under the hard
 * limit too).
 *
 * argv[3] "single": one process.
 *         "tree":   also a child, which replaced the first half of its fds
 *                   with /dev/zero (so the same numbers name other
 *                   descriptions in parent and child) and shares the second
 *                   half with the parent (kcmp).
 * On SIGTERM each side checks every fd: its number, what it names, its
 * offset, and (child) the sharing; the child is told with SIGUSR1.
 */
#include "wl.h"

#include <linux/kcmp.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/wait.h>

static int n;
static ino_t data_ino;
static volatile sig_atomic_t got_usr;

static void on_usr(int sig)
{
    (void)sig;
    got_usr = 1;
}

/* Fd 3 + i in a process where fds below `zeroed` were replaced. */
static void check_fd(int i, int zeroed, const char *who)
{
    int fd = 3 + i;
    struct stat st;
    if (fstat(fd, &st) != 0) {
        wl_fail("%s: fd %d is not open", who, fd);
        return;
    }
    if (fd < zeroed) {
        WL_CHECK(S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 5), "%s: fd %d is not /dev/zero",
                 who, fd);
    } else if (i % 2) {
        WL_CHECK(S_ISCHR(st.st_mode) && st.st_rdev == makedev(1, 3), "%s: fd %d is not /dev/null",
                 who, fd);
    } else {
        WL_CHECK(st.st_ino == data_ino, "%s: fd %d is not the data file", who, fd);
        off_t at = lseek(fd, 0, SEEK_CUR);
        WL_CHECK(at == i, "%s: fd %d is at offset %lld, not %d", who, fd, (long long)at, i);
    }
}

static int count_fds(void)
{
    DIR *d = opendir("/proc/self/fd");
    int c = 0;
    struct dirent *e;
    if (!d)
        return -1;
    while ((e = readdir(d)))
        if (e->d_name[0] != '.')
            c++;
    closedir(d);
    return c - 1; /* the directory's own fd */
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "manyfds");
    int tree = argc > 3 && strcmp(argv[3], "tree") == 0;
    n = argc > 4 ? atoi(argv[4]) : 10000;
    struct rlimit rl;
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = (rlim_t)n + 64;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        wl_die("raise RLIMIT_NOFILE to %d", n + 64);
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s.data", wl_result_abs);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd != 3 || ftruncate(fd, n) != 0)
        wl_die("create %s as fd 3 (got %d)", path, fd);
    struct stat st;
    fstat(fd, &st);
    data_ino = st.st_ino;
    for (int i = 1; i < n; i++) {
        fd = open(i % 2 ? "/dev/null" : path, O_RDONLY);
        if (fd != 3 + i)
            wl_die("open #%d gave fd %d", i, fd);
        if (i % 2 == 0 && lseek(fd, i, SEEK_SET) != i)
            wl_die("lseek");
    }
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr;
    sigaction(SIGUSR1, &sa, NULL);
    int fds_before = count_fds();
    pid_t child = -1;
    int zeroed = 3 + n / 2;
    if (tree) {
        int p[2];
        if (pipe(p) != 0)
            wl_die("pipe");
        child = fork();
        if (child < 0)
            wl_die("fork");
        if (child == 0) {
            wl_name = "manyfds child";
            close(p[0]);
            for (int f = 3; f < zeroed; f++) {
                int z = open("/dev/zero", O_RDONLY);
                if (z < 0 || dup2(z, f) != f)
                    _exit(2);
                close(z);
            }
            close(p[1]);
            sigset_t w = old;
            sigdelset(&w, SIGUSR1);
            while (!got_usr)
                sigsuspend(&w);
            pid_t parent = getppid();
            for (int i = 0; i < n; i++) {
                check_fd(i, zeroed, "child");
                if (3 + i >= zeroed)
                    WL_CHECK(syscall(SYS_kcmp, getpid(), parent, KCMP_FILE, 3 + i, 3 + i) == 0,
                             "child: fd %d no longer shares the parent's description", 3 + i);
            }
            WL_CHECK(count_fds() == fds_before, "child: %d fds open, not %d", count_fds(),
                     fds_before);
            _exit(wl_failures ? 1 : 0);
        }
        close(p[1]);
        char c;
        if (read(p[0], &c, 1) != 0) /* EOF once the child has its fds */
            wl_die("sync with the child");
        close(p[0]);
    }
    /* (wl_ready lists fds into a table too small for these.) */
    int ffd = open(wl_fifo, O_WRONLY | O_CLOEXEC);
    if (ffd < 0 || write(ffd, "ready\n", 6) != 6 || close(ffd) != 0)
        wl_die("ready");
    sigset_t w = old;
    sigdelset(&w, SIGTERM);
    while (!wl_term)
        sigsuspend(&w);
    WL_CHECK(getpid() == wl_pid, "getpid() changed");
    for (int i = 0; i < n; i++)
        check_fd(i, 0, "parent");
    WL_CHECK(count_fds() == fds_before, "parent: %d fds open, not %d", count_fds(), fds_before);
    if (tree) {
        kill(child, SIGUSR1);
        int status = 0;
        WL_CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) &&
                     WEXITSTATUS(status) == 0,
                 "the child found its fds wrong (status %#x, see log)", status);
    }
    wl_finish();
}
