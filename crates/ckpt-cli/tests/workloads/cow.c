/*
 * cow: memory a child shares copy-on-write with its parent after fork.
 *
 * An 8-page private anonymous mapping, then fork:
 *   pages 0-3  filled before the fork, written by neither: parent and child
 *              must still map the very same page frames (pagemap, as root)
 *              and read the data;
 *   page 4     rewritten by the parent after the fork: each sees its own;
 *   page 5     rewritten by the child after the fork: each sees its own;
 *   page 6     first written by the parent after the fork: the child reads
 *              zeros;
 *   page 7     never written: zeros in both.
 * The same again in a private mapping of an 8-page file (pages 0-5
 * rewritten before the fork are copies of the file's, shared copy-on-write;
 * where a side never wrote, it reads the file's content, not zeros).
 * On SIGTERM the parent checks its side and the sharing, then sends the
 * child SIGUSR1; the child checks its side and exits 0 (or 1).
 */
#include "wl.h"

#include <limits.h>
#include <sys/mman.h>
#include <sys/wait.h>

#define PAGE 4096UL
#define PAGES 8

/* areas[0] anonymous, areas[1] a private mapping of a file. */
static uint8_t *areas[2];
#define FILE_SEED 90
static volatile sig_atomic_t got_usr;

static void on_usr(int sig)
{
    (void)sig;
    got_usr = 1;
}

static int is_zero(const uint8_t *p)
{
    for (size_t i = 0; i < PAGE; i++)
        if (p[i])
            return 0;
    return 1;
}

static uint64_t frame(pid_t pid, const void *addr)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    uint64_t e = 0;
    if (fd >= 0) {
        if (pread(fd, &e, 8, (off_t)((uintptr_t)addr / PAGE * 8)) != 8)
            e = 0;
        close(fd);
    }
    return (e >> 63) ? (e & ((1ULL << 55) - 1)) : 0;
}

/* Whether an unwritten page reads what it should: zeros, or the file's. */
static int pristine(int a, int i)
{
    return a ? wl_first_mismatch(areas[a] + i * PAGE, PAGE, FILE_SEED + i) < 0
             : is_zero(areas[a] + i * PAGE);
}

/* Checks one side of area a: child = 0 parent, 1 child. */
static void check_area(int a, int child)
{
    uint8_t *area = areas[a];
    char who[32];
    snprintf(who, sizeof(who), "%s (%s)", child ? "child" : "parent", a ? "file" : "anon");
    for (int i = 0; i < 4; i++)
        WL_CHECK(wl_first_mismatch(area + i * PAGE, PAGE, 10 + i) < 0, "%s: page %d changed", who,
                 i);
    WL_CHECK(wl_first_mismatch(area + 4 * PAGE, PAGE, child ? 14 : 50) < 0, "%s: page 4 wrong",
             who);
    WL_CHECK(wl_first_mismatch(area + 5 * PAGE, PAGE, child ? 60 : 15) < 0, "%s: page 5 wrong",
             who);
    if (child)
        WL_CHECK(pristine(a, 6), "%s: page 6 (the parent's alone) is not pristine", who);
    else
        WL_CHECK(wl_first_mismatch(area + 6 * PAGE, PAGE, 70) < 0, "%s: page 6 wrong", who);
    WL_CHECK(pristine(a, 7), "%s: page 7 is not pristine", who);
}

static void check_side(int child)
{
    check_area(0, child);
    check_area(1, child);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "cow");
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigaddset(&block, SIGUSR1);
    sigaddset(&block, SIGUSR2);
    sigprocmask(SIG_BLOCK, &block, &old);
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = on_usr;
    sigaction(SIGUSR1, &sa, NULL);
    sigaction(SIGUSR2, &sa, NULL);
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGUSR1);
    sigdelset(&wait_mask, SIGUSR2);

    areas[0] = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (areas[0] == MAP_FAILED)
        wl_die("mmap");
    char path[PATH_MAX + 16];
    snprintf(path, sizeof(path), "%s.cowfile", wl_result_abs);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        wl_die("create %s", path);
    static uint8_t page[PAGE];
    for (int i = 0; i < PAGES; i++) {
        wl_fill(page, PAGE, FILE_SEED + i);
        if (write(fd, page, PAGE) != (ssize_t)PAGE)
            wl_die("write %s", path);
    }
    areas[1] = mmap(NULL, PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    if (areas[1] == MAP_FAILED)
        wl_die("mmap %s", path);
    close(fd);
    for (int a = 0; a < 2; a++)
        for (int i = 0; i < 6; i++)
            wl_fill(areas[a] + i * PAGE, PAGE, 10 + i);
    pid_t parent = getpid();
    pid_t child = fork();
    if (child < 0)
        wl_die("fork");
    if (child == 0) {
        wl_name = "cow child";
        for (int a = 0; a < 2; a++)
            wl_fill(areas[a] + 5 * PAGE, PAGE, 60);
        kill(parent, SIGUSR2);
        while (!got_usr)
            sigsuspend(&wait_mask);
        check_side(1);
        _exit(wl_failures ? 1 : 0);
    }
    while (!got_usr)
        sigsuspend(&wait_mask);
    got_usr = 0;
    for (int a = 0; a < 2; a++) {
        uint8_t *area = areas[a];
        wl_fill(area + 4 * PAGE, PAGE, 50);
        wl_fill(area + 6 * PAGE, PAGE, 70);
        for (int i = 0; i < 4; i++)
            if (!frame(getpid(), area + i * PAGE) ||
                frame(getpid(), area + i * PAGE) != frame(child, area + i * PAGE))
                wl_die("area %d page %d not shared with the child before the checkpoint (not root?)",
                       a, i);
    }

    wl_ready();
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    check_side(0);
    for (int n = 0; n < 2; n++) {
        uint8_t *area = areas[n];
        for (int i = 0; i < 4; i++) {
            uint64_t a = frame(getpid(), area + i * PAGE), b = frame(child, area + i * PAGE);
            WL_CHECK(a && a == b,
                     "area %d page %d is no longer shared with the child (frames %#llx, %#llx)", n,
                     i, (unsigned long long)a, (unsigned long long)b);
        }
        for (int i = 4; i < 6; i++)
            WL_CHECK(frame(getpid(), area + i * PAGE) != frame(child, area + i * PAGE),
                     "area %d page %d is shared with the child although both wrote it", n, i);
    }
    kill(child, SIGUSR1);
    int st = 0;
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "the child found its memory wrong (status %#x, see log)", st);
    wl_finish();
}
