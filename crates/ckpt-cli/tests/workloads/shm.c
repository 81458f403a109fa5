/*
 * shm: memory and file descriptions shared between a parent and its child.
 *
 *   anon    1 MiB MAP_SHARED|MAP_ANONYMOUS, mapped before fork: page 0 is a
 *           command block through which parent and child talk, the rest a
 *           pseudo-random pattern.
 *   memfd   a 256 KiB memfd, mapped MAP_SHARED before fork (so in both); the
 *           fd stays open in the parent only (fd MEMFD_FD). Page 0 is scratch
 *           for markers, the rest a pattern.
 *   file    RESULT.data (4096 known bytes) opened O_RDONLY before fork: one
 *           open file description, one offset, in both processes. Before
 *           ready the parent reads 10 bytes and the child 5: offset 15.
 *
 * The child sleeps in a 1 ms nanosleep loop watching the command block; the
 * parent sleeps in sigsuspend. Both stay put across the checkpoint.
 *
 * Verification (SIGTERM to the parent), each step bounded by 5 s:
 *   - the parent's patterns are intact, and so are the child's (it checks its
 *     own view on command);
 *   - anon: the parent writes a fresh value; the child must see it and answer
 *     with a value derived from it, which the parent must see;
 *   - memfd: the parent pwrite()s a marker through the fd: its own mapping and
 *     the child's mapping must show it; the child writes a marker into its
 *     mapping: the parent's mapping and pread() on the fd must show it;
 *   - file: the offset is still 15; the child reads 100 bytes (must get bytes
 *     15..114), then the parent sees offset 115 and reads bytes 115..;
 *   - the child checks getpid/getppid and exits 0; the parent reaps it.
 * Every command is also run once before ready, so the protocol is known to
 * work before the checkpoint.
 */
#include "wl.h"

#include <sys/mman.h>
#include <sys/wait.h>

#define ANON_SIZE (1UL << 20)
#define MEMFD_SIZE (256UL << 10)
#define PAGE 4096UL
#define MEMFD_FD 50
#define DATA_SIZE 4096
#define SEED_ANON 0xa11ce5eedULL
#define SEED_MEMFD 0x3e3fdULL

enum { CMD_NONE, CMD_CHECK, CMD_ANON, CMD_MEMFD, CMD_READ, CMD_EXIT };

struct control {
    volatile uint32_t seq;     /* parent: command number */
    volatile uint32_t cmd;     /* parent: command */
    volatile uint32_t ack;     /* child: last command number done */
    volatile uint32_t arg;     /* parent: argument */
    volatile uint64_t p2c;     /* parent -> child value */
    volatile uint64_t c2p;     /* child -> parent value */
    volatile int32_t nread;    /* child: bytes read by CMD_READ */
    unsigned char rbuf[128];   /* child: what CMD_READ got */
    char fail[512];            /* child: first failure, if any */
};

static struct control *ctl;
static unsigned char *anon, *mfd;
static int file_fd, memfd_fd;

static uint8_t data_byte(size_t i)
{
    return (uint8_t)((i * 37 + (i >> 7)) & 0xff);
}

static void child_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void child_fail(const char *fmt, ...)
{
    if (ctl->fail[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctl->fail, sizeof(ctl->fail), fmt, ap);
    va_end(ap);
    fprintf(stderr, "shm child: FAIL: %s\n", ctl->fail);
}

static void check_patterns(const char *who, void (*fail)(const char *, ...))
{
    long off = wl_first_mismatch(anon + PAGE, ANON_SIZE - PAGE, SEED_ANON);
    if (off >= 0)
        fail("%s: shared anonymous pattern differs at offset %ld", who, off + (long)PAGE);
    off = wl_first_mismatch(mfd + PAGE, MEMFD_SIZE - PAGE, SEED_MEMFD);
    if (off >= 0)
        fail("%s: memfd pattern differs at offset %ld", who, off + (long)PAGE);
}

static void child_loop(pid_t parent)
{
    pid_t me = getpid();
    uint32_t done = 0;
    for (;;) {
        uint32_t seq = __atomic_load_n(&ctl->seq, __ATOMIC_ACQUIRE);
        if (seq == done) {
            wl_sleep_ns(1000000);
            continue;
        }
        switch (ctl->cmd) {
        case CMD_CHECK:
            check_patterns("child", child_fail);
            if (getpid() != me)
                child_fail("child: getpid() is %d, was %d", (int)getpid(), (int)me);
            if (getppid() != parent)
                child_fail("child: getppid() is %d, expected %d", (int)getppid(), (int)parent);
            break;
        case CMD_ANON:
            ctl->c2p = ctl->p2c * 3 + 1;
            break;
        case CMD_MEMFD: {
            /* The parent pwrote "P<arg>" at offset 100 through its fd. */
            char want[32];
            int n = snprintf(want, sizeof(want), "P%u", ctl->arg);
            if (memcmp(mfd + 100, want, (size_t)n + 1) != 0)
                child_fail("child: memfd mapping at 100 holds \"%.20s\", parent wrote \"%s\" via "
                           "its fd",
                           (char *)mfd + 100, want);
            snprintf((char *)mfd + 200, 32, "C%u", ctl->arg);
            break;
        }
        case CMD_READ: {
            ssize_t n = read(file_fd, ctl->rbuf, ctl->arg);
            ctl->nread = (int32_t)n;
            break;
        }
        case CMD_EXIT:
            _exit(ctl->fail[0] ? 1 : 0);
        }
        done = seq;
        __atomic_store_n(&ctl->ack, seq, __ATOMIC_RELEASE);
    }
}

/* Runs a command in the child; 0 on success, -1 (after a failure) on timeout. */
static int command(uint32_t cmd, uint32_t arg, const char *what)
{
    ctl->cmd = cmd;
    ctl->arg = arg;
    uint32_t seq = ctl->seq + 1;
    __atomic_store_n(&ctl->seq, seq, __ATOMIC_RELEASE);
    double deadline = wl_monotonic() + 5;
    while (__atomic_load_n(&ctl->ack, __ATOMIC_ACQUIRE) != seq) {
        if (wl_monotonic() > deadline) {
            wl_fail("the child did not acknowledge command %u (%s) within 5 s: the shared "
                    "anonymous mapping is not shared any more?",
                    seq, what);
            return -1;
        }
        wl_sleep_ns(200000);
    }
    return 0;
}

static void die_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void die_fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    errno = 0;
    wl_die("%s", buf);
}

static void parent_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void parent_fail(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    wl_fail("%s", buf);
}

/* One round of every command. `fail` is wl_die before ready, wl_fail after. */
static void exercise(uint32_t round, void (*fail)(const char *, ...))
{
    /* anon, both directions */
    uint64_t v = 0x1234567800000000ULL + round;
    ctl->p2c = v;
    ctl->c2p = 0;
    if (command(CMD_ANON, 0, "anon") == 0 && ctl->c2p != v * 3 + 1)
        fail("anon: child answered %llu to %llu, expected %llu", (unsigned long long)ctl->c2p,
             (unsigned long long)v, (unsigned long long)(v * 3 + 1));

    /* memfd: parent writes through the fd, child through its mapping */
    char pm[32], cm[32], got[32];
    int n = snprintf(pm, sizeof(pm), "P%u", round);
    if (pwrite(memfd_fd, pm, (size_t)n + 1, 100) != n + 1)
        fail("memfd: pwrite: %s", strerror(errno));
    if (memcmp(mfd + 100, pm, (size_t)n + 1) != 0)
        fail("memfd: own mapping does not show \"%s\" written through the fd", pm);
    if (command(CMD_MEMFD, round, "memfd") == 0) {
        n = snprintf(cm, sizeof(cm), "C%u", round);
        if (memcmp(mfd + 200, cm, (size_t)n + 1) != 0)
            fail("memfd: own mapping at 200 holds \"%.20s\", child wrote \"%s\"",
                 (char *)mfd + 200, cm);
        memset(got, 0, sizeof(got));
        if (pread(memfd_fd, got, (size_t)n + 1, 200) != n + 1 || strcmp(got, cm) != 0)
            fail("memfd: pread on the fd at 200 gives \"%.20s\", child wrote \"%s\" in its "
                 "mapping",
                 got, cm);
    }
}

/* The child reads `len` bytes of the shared file; returns the new offset. */
static void child_reads(off_t expect_from, uint32_t len, void (*fail)(const char *, ...))
{
    if (command(CMD_READ, len, "read") != 0)
        return;
    if (ctl->nread != (int32_t)len) {
        fail("file: child read returned %d, expected %u", ctl->nread, len);
        return;
    }
    for (uint32_t i = 0; i < len; i++)
        if (ctl->rbuf[i] != data_byte((size_t)expect_from + i)) {
            fail("file: child read byte %u as 0x%02x, expected byte %lld of the file", i,
                 ctl->rbuf[i], (long long)expect_from + i);
            return;
        }
    off_t pos = lseek(file_fd, 0, SEEK_CUR);
    if (pos != expect_from + len)
        fail("file: parent's offset is %lld after the child read %u bytes from %lld",
             (long long)pos, len, (long long)expect_from);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "shm");
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &term, &old) != 0)
        wl_die("sigprocmask");

    anon = mmap(NULL, ANON_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED)
        wl_die("mmap(shared anon)");
    ctl = (struct control *)anon;
    wl_fill(anon + PAGE, ANON_SIZE - PAGE, SEED_ANON);

    int fd = memfd_create("ckpt-test-shm", MFD_CLOEXEC);
    if (fd < 0)
        wl_die("memfd_create");
    if (dup2(fd, MEMFD_FD) != MEMFD_FD)
        wl_die("dup2(memfd)");
    close(fd);
    memfd_fd = MEMFD_FD;
    if (ftruncate(memfd_fd, MEMFD_SIZE) != 0)
        wl_die("ftruncate(memfd)");
    mfd = mmap(NULL, MEMFD_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, memfd_fd, 0);
    if (mfd == MAP_FAILED)
        wl_die("mmap(memfd)");
    wl_fill(mfd + PAGE, MEMFD_SIZE - PAGE, SEED_MEMFD);

    char path[4096];
    snprintf(path, sizeof(path), "%s.data", wl_result);
    int wfd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    unsigned char data[DATA_SIZE];
    for (size_t i = 0; i < DATA_SIZE; i++)
        data[i] = data_byte(i);
    if (wfd < 0 || write(wfd, data, DATA_SIZE) != DATA_SIZE || close(wfd) != 0)
        wl_die("writing %s", path);
    file_fd = open(path, O_RDONLY | O_CLOEXEC);
    if (file_fd < 0)
        wl_die("open(%s)", path);

    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        close(memfd_fd); /* the fd lives in the parent only */
        child_loop(parent);
    }

    /* Before ready: everything works, and the file offset becomes 15. */
    unsigned char buf[128];
    if (read(file_fd, buf, 10) != 10 || memcmp(buf, data, 10) != 0)
        wl_die("parent read of the first 10 bytes");
    child_reads(10, 5, die_fail);
    exercise(1, die_fail);
    if (command(CMD_CHECK, 0, "check") != 0 || ctl->fail[0])
        wl_die("child check before ready: %s", ctl->fail);
    if (wl_failures)
        wl_die("protocol failed before ready: %s", wl_first_failure);

    snprintf(path, sizeof(path), "%s.pids", wl_result);
    FILE *f = fopen(path, "we");
    if (!f || fprintf(f, "%d %d\n", (int)parent, (int)child) < 0 || fclose(f) != 0)
        wl_die("writing %s", path);

    wl_ready();
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    check_patterns("parent", parent_fail);
    off_t pos = lseek(file_fd, 0, SEEK_CUR);
    WL_CHECK(pos == 15, "file: offset is %lld after the restore, was 15", (long long)pos);
    if (command(CMD_CHECK, 0, "check") == 0)
        WL_CHECK(!ctl->fail[0], "%s", ctl->fail);
    exercise(2, parent_fail);
    child_reads(15, 100, parent_fail);
    ssize_t n = read(file_fd, buf, 20);
    WL_CHECK(n == 20 && memcmp(buf, data + 115, 20) == 0,
             "file: parent read after the child's does not continue at byte 115");

    ctl->cmd = CMD_EXIT;
    __atomic_store_n(&ctl->seq, ctl->seq + 1, __ATOMIC_RELEASE);
    int st = 0;
    pid_t w = 0;
    double deadline = wl_monotonic() + 5;
    while ((w = waitpid(child, &st, WNOHANG)) == 0 && wl_monotonic() < deadline)
        wl_sleep_ns(1000000);
    if (w != child) {
        wl_fail("the child did not exit on command within 5 s");
        kill(child, SIGKILL);
        waitpid(child, &st, 0);
    } else {
        WL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0, "child exited with status 0x%x (%s)", st,
                 ctl->fail);
    }
    wl_finish();
}
