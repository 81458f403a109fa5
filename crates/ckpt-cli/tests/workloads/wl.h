/*
 * Shared helpers for the checkpoint/restart test workloads.
 *
 * Protocol (see crates/ckpt-cli/tests/common/mod.rs):
 *   argv[1]  path of a FIFO made by the harness: after building its state the
 *            workload opens it, writes "ready\n" and closes it again (no pipe
 *            fd may stay open, pipes are not checkpointable at this stage).
 *   argv[2]  path of the result file: opened only at verification time, gets
 *            exactly "PASS\n" or "FAIL: <first failure> (+N more)\n".
 *   SIGTERM  asks the workload to verify itself; it exits 0 on PASS, 1 on FAIL.
 *
 * Every workload records getpid() at start and checks it at verification, and
 * records the set of open fds just before "ready" and checks it is unchanged
 * (nothing leaked into the process, nothing lost).
 *
 * Diagnostics go to stderr (unbuffered), which the harness sends to a log file.
 */
#ifndef CKPT_TEST_WL_H
#define CKPT_TEST_WL_H

#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

static const char *wl_name = "workload";
static const char *wl_fifo;
static const char *wl_result;
static char wl_fifo_abs[3072], wl_result_abs[3072];
static pid_t wl_pid;
static volatile sig_atomic_t wl_term;

static char wl_first_failure[1024];
static int wl_failures;

#define WL_MAX_FDS 256
static int wl_fds_at_ready[WL_MAX_FDS];
static int wl_nfds_at_ready = -1;

/* Setup failed: this is a broken workload, not a restore bug. */
__attribute__((noreturn, unused, format(printf, 1, 2))) static void wl_die(const char *fmt, ...)
{
    va_list ap;
    int saved = errno;
    fprintf(stderr, "%s: setup error: ", wl_name);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, " (errno %d: %s)\n", saved, strerror(saved));
    exit(2);
}

/* Record a verification failure; the first one goes to the result file. */
__attribute__((unused, format(printf, 1, 2))) static void wl_fail(const char *fmt, ...)
{
    char buf[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    fprintf(stderr, "%s: FAIL: %s\n", wl_name, buf);
    if (wl_failures++ == 0)
        snprintf(wl_first_failure, sizeof(wl_first_failure), "%s", buf);
}

#define WL_CHECK(cond, ...)                                                                        \
    do {                                                                                           \
        if (!(cond))                                                                               \
            wl_fail(__VA_ARGS__);                                                                  \
    } while (0)

static __attribute__((unused)) void wl_on_term(int sig)
{
    (void)sig;
    wl_term = 1;
}

static __attribute__((unused)) void wl_install_term_handler(void)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = wl_on_term;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0; /* no SA_RESTART: blocking syscalls return EINTR */
    if (sigaction(SIGTERM, &sa, NULL) != 0)
        wl_die("sigaction(SIGTERM)");
}

static __attribute__((unused)) void wl_init(int argc, char **argv, const char *name)
{
    wl_name = name;
    if (argc < 3) {
        fprintf(stderr, "usage: %s READY_FIFO RESULT_FILE [ARGS...]\n", argv[0]);
        exit(2);
    }
    /* Absolute paths: some workloads change their working directory. */
    char cwd[1024];
    if (!getcwd(cwd, sizeof(cwd)))
        wl_die("getcwd");
    snprintf(wl_fifo_abs, sizeof(wl_fifo_abs), "%s%s%s", argv[1][0] == '/' ? "" : cwd,
             argv[1][0] == '/' ? "" : "/", argv[1]);
    snprintf(wl_result_abs, sizeof(wl_result_abs), "%s%s%s", argv[2][0] == '/' ? "" : cwd,
             argv[2][0] == '/' ? "" : "/", argv[2]);
    wl_fifo = wl_fifo_abs;
    wl_result = wl_result_abs;
    wl_pid = getpid();
    wl_install_term_handler();
}

static __attribute__((unused)) int wl_cmp_int(const void *a, const void *b)
{
    int x = *(const int *)a, y = *(const int *)b;
    return (x > y) - (x < y);
}

/* Sorted list of the open fds, excluding the one used to list them. */
static __attribute__((unused)) int wl_list_fds(int *out, int max)
{
    DIR *d = opendir("/proc/self/fd");
    struct dirent *e;
    int n = 0;
    if (!d)
        return -1;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        int fd = atoi(e->d_name);
        if (fd == dirfd(d))
            continue;
        if (n < max)
            out[n] = fd;
        n++;
    }
    closedir(d);
    if (n > max)
        return -1;
    qsort(out, (size_t)n, sizeof(int), wl_cmp_int);
    return n;
}

static __attribute__((unused)) void wl_format_fds(char *buf, size_t len, const int *fds, int n)
{
    size_t off = 0;
    buf[0] = 0;
    for (int i = 0; i < n && off + 16 < len; i++)
        off += (size_t)snprintf(buf + off, len - off, "%s%d", i ? "," : "", fds[i]);
}

/* Write "ready\n" to the FIFO and close it again. */
static __attribute__((unused)) void wl_ready(void)
{
    wl_nfds_at_ready = wl_list_fds(wl_fds_at_ready, WL_MAX_FDS);
    if (wl_nfds_at_ready < 0)
        wl_die("listing /proc/self/fd");
    int fd = open(wl_fifo, O_WRONLY | O_CLOEXEC);
    if (fd < 0)
        wl_die("open(%s)", wl_fifo);
    if (write(fd, "ready\n", 6) != 6)
        wl_die("write(ready)");
    if (close(fd) != 0)
        wl_die("close(fifo)");
    char fds[512];
    wl_format_fds(fds, sizeof(fds), wl_fds_at_ready, wl_nfds_at_ready);
    fprintf(stderr, "%s: pid %d ready, open fds {%s}\n", wl_name, (int)wl_pid, fds);
}

/* Waits for SIGTERM without missing one sent before the wait starts. */
static __attribute__((unused)) void wl_wait_term(void)
{
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    while (!wl_term)
        sigsuspend(&old);
    sigprocmask(SIG_SETMASK, &old, NULL);
}

/* Checks every workload does first when verifying. */
static __attribute__((unused)) void wl_verify_common(void)
{
    pid_t now = getpid();
    WL_CHECK(now == wl_pid, "getpid() is %d, was %d at start", (int)now, (int)wl_pid);

    int fds[WL_MAX_FDS];
    int n = wl_list_fds(fds, WL_MAX_FDS);
    int same = n == wl_nfds_at_ready;
    for (int i = 0; same && i < n; i++)
        same = fds[i] == wl_fds_at_ready[i];
    if (!same) {
        char was[512], is[512];
        wl_format_fds(was, sizeof(was), wl_fds_at_ready, wl_nfds_at_ready);
        if (n >= 0)
            wl_format_fds(is, sizeof(is), fds, n);
        else
            snprintf(is, sizeof(is), "(cannot list)");
        wl_fail("open fds changed: at ready {%s}, now {%s}", was, is);
    }
}

/* Write the result file and exit: 0 on PASS, 1 on FAIL. */
__attribute__((noreturn, unused)) static void wl_finish(void)
{
    char buf[1200];
    int len;
    if (wl_failures == 0)
        len = snprintf(buf, sizeof(buf), "PASS\n");
    else if (wl_failures == 1)
        len = snprintf(buf, sizeof(buf), "FAIL: %s\n", wl_first_failure);
    else
        len = snprintf(buf, sizeof(buf), "FAIL: %s (+%d more, see log)\n", wl_first_failure,
                       wl_failures - 1);
    if (len >= (int)sizeof(buf))
        len = (int)sizeof(buf) - 1;
    int fd = open(wl_result, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        wl_die("open(%s)", wl_result);
    if (write(fd, buf, (size_t)len) != len)
        wl_die("write(result)");
    if (close(fd) != 0)
        wl_die("close(result)");
    fprintf(stderr, "%s: %s", wl_name, buf);
    exit(wl_failures == 0 ? 0 : 1);
}

static __attribute__((unused)) void wl_sleep_ns(long ns)
{
    struct timespec ts = {ns / 1000000000L, ns % 1000000000L};
    nanosleep(&ts, NULL); /* EINTR is fine: callers loop on their flags */
}

static __attribute__((unused)) double wl_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Deterministic pseudo-random stream (xorshift64*). */
static inline __attribute__((unused)) uint64_t wl_rand(uint64_t *state)
{
    uint64_t x = *state;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *state = x;
    return x * 0x2545F4914F6CDD1DULL;
}

/* Fill a buffer with the stream seeded by `seed` (len multiple of 8). */
static __attribute__((unused)) void wl_fill(void *buf, size_t len, uint64_t seed)
{
    uint64_t st = seed | 1, *p = buf;
    for (size_t i = 0; i < len / 8; i++)
        p[i] = wl_rand(&st);
}

/* Offset of the first 8-byte word differing from the stream, or -1. */
static __attribute__((unused)) long wl_first_mismatch(const void *buf, size_t len, uint64_t seed)
{
    uint64_t st = seed | 1;
    const uint64_t *p = buf;
    for (size_t i = 0; i < len / 8; i++)
        if (p[i] != wl_rand(&st))
            return (long)(i * 8);
    return -1;
}

/* Position-dependent checksum. */
static __attribute__((unused)) uint64_t wl_checksum(const void *buf, size_t len)
{
    const uint64_t *p = buf;
    uint64_t h = 0xcbf29ce484222325ULL;
    for (size_t i = 0; i < len / 8; i++) {
        h ^= p[i] + i;
        h *= 0x100000001b3ULL;
        h ^= h >> 29;
    }
    return h;
}

/* Read a whole file into a NUL-terminated malloc'd buffer. */
static __attribute__((unused)) char *wl_read_file(const char *path, size_t *len_out)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 1 << 16, len = 0;
    char *buf = malloc(cap + 1);
    for (;;) {
        if (len == cap) {
            cap *= 2;
            buf = realloc(buf, cap + 1);
        }
        ssize_t r = read(fd, buf + len, cap - len);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    close(fd);
    buf[len] = 0;
    if (len_out)
        *len_out = len;
    return buf;
}

#endif
