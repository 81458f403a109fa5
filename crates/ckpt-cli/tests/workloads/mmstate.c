/*
 * mmstate: address-space state beyond contents, and files that only live on
 * as open fds or mappings.
 *
 *   advice    anonymous mappings with MADV_DONTFORK, MAP_LOCKED +
 *             MADV_SEQUENTIAL, MAP_NORESERVE + MADV_DONTDUMP, MADV_RANDOM,
 *             MADV_HUGEPAGE, MADV_NOHUGEPAGE, MADV_MERGEABLE (if KSM is
 *             there), MADV_WIPEONFORK, MAP_DROPPABLE (if the kernel has it):
 *             each keeps its whole smaps VmFlags line. The wipe-on-fork
 *             mapping keeps its data, and a child forked after the restore
 *             sees it zeroed; droppable memory holds its data or zeros.
 *   fileprot  a file opened O_RDWR mapped MAP_SHARED|PROT_READ can still be
 *             mprotect'ed writable; one opened O_RDONLY still cannot (EACCES).
 *   objpriv   MAP_PRIVATE mappings of a memfd and of a shared anonymous
 *             object, never touched: they read the object's data, and a write
 *             to the object after the restore shows through them.
 *   memfd     a memfd with mode 0640 and F_SEAL_WRITE|F_SEAL_SHRINK keeps both.
 *   thp       prctl(PR_SET_THP_DISABLE, 1) is still set.
 *   membar    membarrier(REGISTER_PRIVATE_EXPEDITED): still registered
 *             (GET_REGISTRATIONS), and PRIVATE_EXPEDITED works.
 *   ghost     an unlinked file (mode 0640) with a hole in the middle and at
 *             the end: same size, data, holes (SEEK_HOLE), mode; it is also
 *             mapped MAP_PRIVATE with an untouched page, and a pwrite through
 *             the fd after the restore shows in that page (one file again).
 *   ghostmap  an unlinked file only mapped (its fd closed), shared and
 *             private, never touched: both read its data, and a write through
 *             the shared mapping shows in the private one.
 *
 * With the argument "mdwe" it also sets memory-deny-write-execute
 * (PR_SET_MDWE), which a checkpoint must refuse (restart cannot set it yet).
 */
#include "wl.h"

#include <linux/membarrier.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>

#define PAGE 4096UL

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE 0x08
#endif
#ifndef MADV_WIPEONFORK
#define MADV_WIPEONFORK 18
#endif
#define CMD_GET_REGISTRATIONS (1 << 9)

struct adv {
    const char *name;
    int flags;
    int advice; /* -1: none */
    uint8_t *p;
    char vmflags[256];
};

static struct adv advs[] = {
    {"dontfork", MAP_PRIVATE, MADV_DONTFORK, 0, ""},
    {"locked+sequential", MAP_PRIVATE | MAP_LOCKED, MADV_SEQUENTIAL, 0, ""},
    {"noreserve+dontdump", MAP_PRIVATE | MAP_NORESERVE, MADV_DONTDUMP, 0, ""},
    {"random", MAP_PRIVATE, MADV_RANDOM, 0, ""},
    {"hugepage", MAP_PRIVATE, MADV_HUGEPAGE, 0, ""},
    {"nohugepage", MAP_PRIVATE, MADV_NOHUGEPAGE, 0, ""},
    {"mergeable", MAP_PRIVATE, MADV_MERGEABLE, 0, ""},
    {"wipeonfork", MAP_PRIVATE, MADV_WIPEONFORK, 0, ""},
    {"droppable", MAP_DROPPABLE, -1, 0, ""},
};
#define NADV (sizeof(advs) / sizeof(advs[0]))
#define ADV_SIZE (4 * PAGE)

static uint8_t *rw_shared, *ro_shared, *memfd_priv, *anon_priv, *anon_obj, *ghost_map;
static uint8_t *gm_shared, *gm_priv;
static int memfd, ghost_fd;
static char ghost_path[4096], gm_path[4096];
static int have_hole;

/* The VmFlags line of the mapping holding addr, without its newline. */
static int vmflags(const void *addr, char *out, size_t len)
{
    FILE *f = fopen("/proc/self/smaps", "re");
    if (!f)
        return -1;
    char line[1024];
    unsigned long start = 0, end = 0, a = (unsigned long)addr;
    int inside = 0, found = -1;
    while (fgets(line, sizeof(line), f)) {
        unsigned long s, e;
        if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') < strchr(line, ' ')) {
            start = s;
            end = e;
            inside = start <= a && a < end;
        } else if (inside && !strncmp(line, "VmFlags:", 8)) {
            line[strcspn(line, "\n")] = 0;
            snprintf(out, len, "%s", line + 8);
            found = 0;
            break;
        }
    }
    fclose(f);
    return found;
}

static void fill(uint8_t *p, size_t len, uint64_t seed)
{
    wl_fill(p, len, seed);
}

static int is_zero(const uint8_t *p, size_t len)
{
    for (size_t i = 0; i < len; i++)
        if (p[i])
            return 0;
    return 1;
}

static uint8_t *map_file(const char *path, int oflags, int prot, int mflags, size_t len, int *fd_out)
{
    int fd = open(path, oflags | O_CLOEXEC);
    if (fd < 0)
        wl_die("open(%s)", path);
    uint8_t *p = mmap(NULL, len, prot, mflags, fd, 0);
    if (p == MAP_FAILED)
        wl_die("mmap(%s)", path);
    if (fd_out)
        *fd_out = fd;
    else
        close(fd);
    return p;
}

static void setup(void)
{
    /* advice */
    for (size_t i = 0; i < NADV; i++) {
        struct adv *a = &advs[i];
        a->p = mmap(NULL, ADV_SIZE, PROT_READ | PROT_WRITE, a->flags | MAP_ANONYMOUS, -1, 0);
        if (a->p == MAP_FAILED) {
            if (errno == EINVAL && (a->flags & MAP_DROPPABLE)) {
                fprintf(stderr, "mmstate: no MAP_DROPPABLE here\n");
                a->p = NULL;
                continue;
            }
            wl_die("mmap(%s)", a->name);
        }
        if (a->advice >= 0 && madvise(a->p, ADV_SIZE, a->advice) != 0) {
            if (errno == EINVAL && a->advice == MADV_MERGEABLE) {
                fprintf(stderr, "mmstate: no KSM here\n");
                munmap(a->p, ADV_SIZE);
                a->p = NULL;
                continue;
            }
            wl_die("madvise(%s)", a->name);
        }
        fill(a->p, ADV_SIZE, 100 + i);
        if (vmflags(a->p, a->vmflags, sizeof(a->vmflags)) != 0)
            wl_die("no VmFlags for %s", a->name);
    }

    /* fileprot */
    char path[4200];
    uint8_t page[PAGE];
    snprintf(path, sizeof(path), "%s.prot", wl_result);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0 || ftruncate(fd, 2 * PAGE) != 0)
        wl_die("create %s", path);
    close(fd);
    rw_shared = map_file(path, O_RDWR, PROT_READ, MAP_SHARED, PAGE, NULL);
    ro_shared = map_file(path, O_RDONLY, PROT_READ, MAP_SHARED, PAGE, NULL);

    /* objpriv */
    memfd = memfd_create("mmstate", MFD_CLOEXEC | MFD_ALLOW_SEALING);
    if (memfd < 0 || ftruncate(memfd, 4 * PAGE) != 0)
        wl_die("memfd");
    for (int i = 0; i < 4; i++) {
        fill(page, PAGE, 200 + i);
        if (pwrite(memfd, page, PAGE, i * PAGE) != (ssize_t)PAGE)
            wl_die("pwrite(memfd)");
    }
    memfd_priv = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, memfd, 0);
    anon_obj = mmap(NULL, 4 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (memfd_priv == MAP_FAILED || anon_obj == MAP_FAILED)
        wl_die("mmap objects");
    for (int i = 0; i < 4; i++)
        fill(anon_obj + i * PAGE, PAGE, 300 + i);
    snprintf(path, sizeof(path), "/proc/self/map_files/%lx-%lx", (unsigned long)anon_obj,
             (unsigned long)anon_obj + 4 * PAGE);
    anon_priv = map_file(path, O_RDWR, PROT_READ | PROT_WRITE, MAP_PRIVATE, 4 * PAGE, NULL);
    /* Page 0 of each private mapping becomes its own copy; 1..3 stay the object's. */
    fill(memfd_priv, PAGE, 400);
    fill(anon_priv, PAGE, 401);

    /* memfd: mode and seals */
    if (fchmod(memfd, 0640) != 0 || fcntl(memfd, F_ADD_SEALS, F_SEAL_SHRINK) != 0)
        wl_die("fchmod/seal memfd");

    /* thp */
    if (prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) != 0)
        wl_die("PR_SET_THP_DISABLE");

    /* membar */
    if (syscall(SYS_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0)
        wl_die("membarrier register");

    /* ghost: pages 0 and 2 of 4 hold data, 1 and 3 are holes. */
    snprintf(ghost_path, sizeof(ghost_path), "%s.ghost", wl_result);
    ghost_fd = open(ghost_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
    if (ghost_fd < 0 || fchmod(ghost_fd, 0640) != 0)
        wl_die("create %s", ghost_path);
    fill(page, PAGE, 500);
    if (pwrite(ghost_fd, page, PAGE, 0) != (ssize_t)PAGE)
        wl_die("pwrite ghost");
    fill(page, PAGE, 502);
    if (pwrite(ghost_fd, page, PAGE, 2 * PAGE) != (ssize_t)PAGE)
        wl_die("pwrite ghost");
    if (ftruncate(ghost_fd, 4 * PAGE) != 0)
        wl_die("ftruncate ghost");
    have_hole = lseek(ghost_fd, 0, SEEK_HOLE) == (off_t)PAGE;
    ghost_map = mmap(NULL, 4 * PAGE, PROT_READ, MAP_PRIVATE, ghost_fd, 0);
    if (ghost_map == MAP_FAILED)
        wl_die("mmap ghost");
    if (lseek(ghost_fd, 123, SEEK_SET) != 123 || unlink(ghost_path) != 0)
        wl_die("unlink ghost");

    /* ghostmap */
    snprintf(gm_path, sizeof(gm_path), "%s.ghostmap", wl_result);
    fd = open(gm_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        wl_die("create %s", gm_path);
    for (int i = 0; i < 2; i++) {
        fill(page, PAGE, 600 + i);
        if (pwrite(fd, page, PAGE, i * PAGE) != (ssize_t)PAGE)
            wl_die("pwrite ghostmap");
    }
    gm_shared = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    gm_priv = mmap(NULL, 2 * PAGE, PROT_READ, MAP_PRIVATE, fd, 0);
    if (gm_shared == MAP_FAILED || gm_priv == MAP_FAILED)
        wl_die("mmap ghostmap");
    close(fd);
    if (unlink(gm_path) != 0)
        wl_die("unlink ghostmap");
}

static void check_page(const uint8_t *p, uint64_t seed, const char *what)
{
    long at = wl_first_mismatch(p, PAGE, seed);
    WL_CHECK(at < 0, "%s: wrong data at byte %ld", what, at);
}

static void verify(void)
{
    /* advice */
    for (size_t i = 0; i < NADV; i++) {
        struct adv *a = &advs[i];
        if (!a->p)
            continue;
        char now[256];
        if (vmflags(a->p, now, sizeof(now)) != 0) {
            wl_fail("%s: mapping gone", a->name);
            continue;
        }
        WL_CHECK(!strcmp(now, a->vmflags), "%s: VmFlags were '%s', now '%s'", a->name,
                 a->vmflags, now);
        if (a->flags & MAP_DROPPABLE)
            WL_CHECK(is_zero(a->p, ADV_SIZE) || wl_first_mismatch(a->p, ADV_SIZE, 100 + i) < 0,
                     "%s: data neither kept nor dropped", a->name);
        else
            WL_CHECK(wl_first_mismatch(a->p, ADV_SIZE, 100 + i) < 0, "%s: data changed",
                     a->name);
    }
    struct adv *wipe = &advs[7];
    pid_t child = fork();
    if (child == 0)
        _exit(is_zero(wipe->p, ADV_SIZE) ? 0 : 1);
    int st = 0;
    WL_CHECK(child > 0 && waitpid(child, &st, 0) == child && WIFEXITED(st) &&
                 WEXITSTATUS(st) == 0,
             "wipeonfork: a child forked after the restore does not see it wiped");

    /* fileprot */
    WL_CHECK(mprotect(rw_shared, PAGE, PROT_READ | PROT_WRITE) == 0,
             "fileprot: mprotect of a read-write file's shared mapping: %s", strerror(errno));
    errno = 0;
    WL_CHECK(mprotect(ro_shared, PAGE, PROT_READ | PROT_WRITE) != 0 && errno == EACCES,
             "fileprot: a read-only file's shared mapping became writable (errno %d)", errno);

    /* objpriv */
    check_page(memfd_priv, 400, "memfd private copy");
    check_page(anon_priv, 401, "shared anonymous private copy");
    for (int i = 1; i < 4; i++) {
        check_page(memfd_priv + i * PAGE, 200 + i, "memfd private mapping, object page");
        check_page(anon_priv + i * PAGE, 300 + i, "shared anonymous private mapping, object page");
    }
    uint8_t page[PAGE];
    fill(page, PAGE, 700);
    WL_CHECK(pwrite(memfd, page, PAGE, 3 * PAGE) == (ssize_t)PAGE, "pwrite memfd");
    check_page(memfd_priv + 3 * PAGE, 700, "memfd private mapping after a write to the memfd");
    fill(anon_obj + 3 * PAGE, PAGE, 701);
    check_page(anon_priv + 3 * PAGE, 701, "anon private mapping after a write to the object");

    /* memfd */
    struct stat sb;
    WL_CHECK(fstat(memfd, &sb) == 0 && (sb.st_mode & 07777) == 0640, "memfd: mode %o, was 0640",
             sb.st_mode & 07777);
    int seals = fcntl(memfd, F_GET_SEALS);
    WL_CHECK(seals == F_SEAL_SHRINK, "memfd: seals %#x, were %#x", seals, F_SEAL_SHRINK);

    /* thp */
    int thp = prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0);
    WL_CHECK(thp == 1, "thp: PR_GET_THP_DISABLE is %d, was 1", thp);

    /* membar */
    long regs = syscall(SYS_membarrier, CMD_GET_REGISTRATIONS, 0, 0);
    WL_CHECK(regs < 0 || regs == MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED,
             "membarrier: registrations %#lx, were %#x", regs,
             MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED);
    WL_CHECK(syscall(SYS_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) == 0,
             "membarrier: PRIVATE_EXPEDITED: %s", strerror(errno));

    /* ghost */
    WL_CHECK(fstat(ghost_fd, &sb) == 0 && sb.st_size == (off_t)(4 * PAGE) && sb.st_nlink == 0 &&
                 (sb.st_mode & 07777) == 0640,
             "ghost: size %lld nlink %lu mode %o, were %lu 0 0640", (long long)sb.st_size,
             (unsigned long)sb.st_nlink, sb.st_mode & 07777, 4 * PAGE);
    WL_CHECK(lseek(ghost_fd, 0, SEEK_CUR) == 123, "ghost: offset changed");
    if (have_hole) {
        WL_CHECK(lseek(ghost_fd, 0, SEEK_HOLE) == (off_t)PAGE, "ghost: middle hole gone");
        WL_CHECK(lseek(ghost_fd, 2 * PAGE, SEEK_HOLE) == (off_t)(3 * PAGE),
                 "ghost: tail hole gone");
    }
    WL_CHECK(pread(ghost_fd, page, PAGE, 0) == (ssize_t)PAGE, "ghost: pread");
    check_page(page, 500, "ghost: page 0");
    WL_CHECK(pread(ghost_fd, page, PAGE, 2 * PAGE) == (ssize_t)PAGE, "ghost: pread");
    check_page(page, 502, "ghost: page 2");
    WL_CHECK(pread(ghost_fd, page, PAGE, PAGE) == (ssize_t)PAGE && is_zero(page, PAGE),
             "ghost: hole does not read as zeros");
    check_page(ghost_map, 500, "ghost mapping page 0");
    fill(page, PAGE, 503);
    WL_CHECK(pwrite(ghost_fd, page, PAGE, 3 * PAGE) == (ssize_t)PAGE, "ghost: pwrite");
    check_page(ghost_map + 3 * PAGE, 503, "ghost mapping after a write through the fd");

    /* ghostmap */
    check_page(gm_shared, 600, "ghostmap shared page 0");
    check_page(gm_priv + PAGE, 601, "ghostmap private page 1");
    fill(gm_shared + PAGE, PAGE, 800);
    check_page(gm_priv + PAGE, 800, "ghostmap private mapping after a write to the shared one");
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "mmstate");
    if (argc > 3 && !strcmp(argv[3], "mdwe") && prctl(65 /* PR_SET_MDWE */, 1, 0, 0, 0) != 0)
        wl_die("prctl(PR_SET_MDWE)");
    sigset_t block, old;
    sigemptyset(&block);
    sigaddset(&block, SIGTERM);
    sigprocmask(SIG_BLOCK, &block, &old);
    setup();
    wl_ready();
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);
    wl_verify_common();
    verify();
    wl_finish();
}
