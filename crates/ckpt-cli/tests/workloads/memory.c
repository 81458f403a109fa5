/*
 * memory: a mix of mappings, the program break and a deep stack.
 *
 *   anon      16 MiB private anonymous, every third page written, the rest
 *             never touched (must read as zeros).
 *   huge      256 MiB private anonymous, never touched: must still have no
 *             resident page after the restore (mincore), i.e. the checkpointer
 *             must neither dump nor populate it.
 *   private   MAP_PRIVATE mapping of a 64-page file: pages 0,4,8.. rewritten
 *             (copy-on-write), pages 1,5,9.. read, the rest untouched. Modified
 *             pages must hold the new data, clean pages the file's data.
 *   shared    MAP_SHARED mapping of a 16-page file, written through the
 *             mapping. Mapping and file must agree, and must still be one and
 *             the same memory after the restore (a write on either side is
 *             seen on the other).
 *   ro        anonymous, filled, then mprotect(PROT_READ): content and "r--p".
 *   none      anonymous, filled, then mprotect(PROT_NONE): "---p", and the
 *             content is back after mprotect(PROT_READ).
 *   brk       2 MiB from sbrk() before ready, filled. The kernel's break must
 *             equal libc's idea of it, and sbrk(1 MiB) must still extend it
 *             contiguously; malloc(100 MiB) must work.
 *   stack     the wait loop runs 2000 frames deep; every frame holds a local
 *             array with a depth-dependent pattern, checked while unwinding.
 */
#include "wl.h"

#include <sys/mman.h>
#include <sys/syscall.h>

#define PAGE 4096UL
#define ANON_SIZE (16UL << 20)
#define HUGE_SIZE (256UL << 20)
#define PRIV_PAGES 64
#define SHARED_PAGES 16
#define PROT_PAGES 4
#define BRK_SIZE (2UL << 20)
#define DEPTH 2000

static uint8_t *anon, *huge, *priv, *shared, *ro, *none, *brk_area;
static char priv_path[4096], shared_path[4096];
static int priv_fd, shared_fd;

static void fill_page(uint8_t *p, uint64_t seed)
{
    wl_fill(p, PAGE, seed);
}

static void write_file(const char *path, int *fd_out, int pages, uint64_t seed)
{
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0)
        wl_die("open(%s)", path);
    uint8_t page[PAGE];
    for (int i = 0; i < pages; i++) {
        fill_page(page, seed + (uint64_t)i);
        if (write(fd, page, PAGE) != (ssize_t)PAGE)
            wl_die("write(%s)", path);
    }
    *fd_out = fd;
}

static uint8_t *map_anon(size_t len, int extra_flags)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | extra_flags,
                   -1, 0);
    if (p == MAP_FAILED)
        wl_die("mmap(%zu)", len);
    return p;
}

static long resident_pages(void *addr, size_t len)
{
    static unsigned char vec[HUGE_SIZE / PAGE];
    if (mincore(addr, len, vec) != 0)
        return -1;
    long n = 0;
    for (size_t i = 0; i < len / PAGE; i++)
        n += vec[i] & 1;
    return n;
}

/* The permissions column of the /proc/self/maps line covering addr. */
static void perms_of(const void *addr, char out[5])
{
    strcpy(out, "????");
    FILE *f = fopen("/proc/self/maps", "re");
    if (!f)
        return;
    char line[512];
    uintptr_t a = (uintptr_t)addr;
    while (fgets(line, sizeof(line), f)) {
        unsigned long lo, hi;
        char perms[5];
        if (sscanf(line, "%lx-%lx %4s", &lo, &hi, perms) == 3 && lo <= a && a < hi) {
            memcpy(out, perms, 5);
            break;
        }
    }
    fclose(f);
}

static void setup(void)
{
    /* Program break first, before malloc has a reason to move it. */
    brk_area = sbrk(BRK_SIZE);
    if (brk_area == (void *)-1)
        wl_die("sbrk");
    wl_fill(brk_area, BRK_SIZE, 0xb7c0);

    anon = map_anon(ANON_SIZE, 0);
    for (size_t i = 0; i < ANON_SIZE / PAGE; i += 3)
        fill_page(anon + i * PAGE, 0xa000 + i);

    huge = map_anon(HUGE_SIZE, MAP_NORESERVE);
    long r = resident_pages(huge, HUGE_SIZE);
    if (r != 0)
        wl_die("untouched region has %ld resident pages before ready", r);

    snprintf(priv_path, sizeof(priv_path), "%s.private", wl_result);
    write_file(priv_path, &priv_fd, PRIV_PAGES, 0x9000);
    priv = mmap(NULL, PRIV_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, priv_fd, 0);
    if (priv == MAP_FAILED)
        wl_die("mmap private");
    close(priv_fd);
    volatile uint8_t sink = 0;
    for (int i = 0; i < PRIV_PAGES; i++) {
        if (i % 4 == 0)
            fill_page(priv + (size_t)i * PAGE, 0x7000 + (uint64_t)i); /* copy-on-write */
        else if (i % 4 == 1)
            sink ^= priv[(size_t)i * PAGE + 17]; /* faulted in, clean */
    }
    (void)sink;

    snprintf(shared_path, sizeof(shared_path), "%s.shared", wl_result);
    write_file(shared_path, &shared_fd, SHARED_PAGES, 0x8000);
    shared = mmap(NULL, SHARED_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, shared_fd, 0);
    if (shared == MAP_FAILED)
        wl_die("mmap shared");
    close(shared_fd);
    for (int i = 0; i < SHARED_PAGES; i++)
        fill_page(shared + (size_t)i * PAGE, 0x6000 + (uint64_t)i);

    ro = map_anon(PROT_PAGES * PAGE, 0);
    wl_fill(ro, PROT_PAGES * PAGE, 0x5000);
    if (mprotect(ro, PROT_PAGES * PAGE, PROT_READ) != 0)
        wl_die("mprotect ro");

    none = map_anon(PROT_PAGES * PAGE, 0);
    wl_fill(none, PROT_PAGES * PAGE, 0x4000);
    if (mprotect(none, PROT_PAGES * PAGE, PROT_NONE) != 0)
        wl_die("mprotect none");
}

static int file_page_equals(const char *path, int page_index, const uint8_t *mem)
{
    uint8_t page[PAGE];
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return 0;
    ssize_t r = pread(fd, page, PAGE, (off_t)page_index * (off_t)PAGE);
    close(fd);
    return r == (ssize_t)PAGE && memcmp(page, mem, PAGE) == 0;
}

static void verify_mappings(void)
{
    /* Before anything else can touch it. */
    long r = resident_pages(huge, HUGE_SIZE);
    WL_CHECK(r == 0, "never-touched 256 MiB region has %ld resident pages (mincore %s)", r,
             r < 0 ? strerror(errno) : "ok");
    char perms[5];
    perms_of(huge, perms);
    WL_CHECK(strcmp(perms, "rw-p") == 0, "256 MiB region has perms %s, expected rw-p", perms);
    huge[HUGE_SIZE - PAGE] = 42; /* still writable */
    WL_CHECK(huge[HUGE_SIZE - PAGE] == 42, "256 MiB region not writable");

    /* brk: the kernel's break must match libc's cached one. */
    void *kernel_brk = (void *)syscall(SYS_brk, 0);
    void *libc_brk = sbrk(0);
    WL_CHECK(kernel_brk == libc_brk, "kernel program break %p != libc's %p", kernel_brk, libc_brk);
    long bad = wl_first_mismatch(brk_area, BRK_SIZE, 0xb7c0);
    WL_CHECK(bad < 0, "brk area differs at offset %ld", bad);
    uint8_t *more = sbrk(1UL << 20);
    if (more == (void *)-1) {
        wl_fail("sbrk(1 MiB) after restore failed: %s", strerror(errno));
    } else {
        WL_CHECK(more == libc_brk, "sbrk(1 MiB) returned %p, break was %p", (void *)more, libc_brk);
        wl_fill(more, 1UL << 20, 0xb7c1);
        bad = wl_first_mismatch(more, 1UL << 20, 0xb7c1);
        WL_CHECK(bad < 0, "new brk memory differs at offset %ld", bad);
        void *now = (void *)syscall(SYS_brk, 0);
        WL_CHECK(now == (void *)(more + (1UL << 20)), "kernel break %p after sbrk, expected %p",
                 now, (void *)(more + (1UL << 20)));
    }
    uint8_t *big = malloc(100UL << 20);
    if (!big) {
        wl_fail("malloc(100 MiB) failed after restore");
    } else {
        memset(big, 0x5a, 100UL << 20);
        WL_CHECK(big[0] == 0x5a && big[(100UL << 20) - 1] == 0x5a, "malloc'd memory broken");
        free(big);
    }

    /* anon: written pages keep their data, untouched ones read as zero. */
    for (size_t i = 0; i < ANON_SIZE / PAGE; i++) {
        uint8_t *p = anon + i * PAGE;
        if (i % 3 == 0) {
            bad = wl_first_mismatch(p, PAGE, 0xa000 + i);
            if (bad >= 0) {
                wl_fail("anon page %zu differs at offset %ld", i, bad);
                break;
            }
        } else {
            size_t j = 0;
            while (j < PAGE && p[j] == 0)
                j++;
            if (j < PAGE) {
                wl_fail("untouched anon page %zu is not zero at offset %zu", i, j);
                break;
            }
        }
    }

    /* private file mapping */
    for (int i = 0; i < PRIV_PAGES; i++) {
        uint8_t *p = priv + (size_t)i * PAGE;
        if (i % 4 == 0) {
            bad = wl_first_mismatch(p, PAGE, 0x7000 + (uint64_t)i);
            if (bad >= 0) {
                wl_fail("modified MAP_PRIVATE page %d lost its data (offset %ld)", i, bad);
                break;
            }
        } else {
            bad = wl_first_mismatch(p, PAGE, 0x9000 + (uint64_t)i);
            if (bad >= 0 || !file_page_equals(priv_path, i, p)) {
                wl_fail("clean MAP_PRIVATE page %d differs from the file (offset %ld)", i, bad);
                break;
            }
        }
    }
    perms_of(priv, perms);
    WL_CHECK(strcmp(perms, "rw-p") == 0, "MAP_PRIVATE mapping has perms %s, expected rw-p", perms);

    /* shared file mapping */
    for (int i = 0; i < SHARED_PAGES; i++) {
        uint8_t *p = shared + (size_t)i * PAGE;
        bad = wl_first_mismatch(p, PAGE, 0x6000 + (uint64_t)i);
        if (bad >= 0 || !file_page_equals(shared_path, i, p)) {
            wl_fail("MAP_SHARED page %d: mapping %s, file %s", i, bad >= 0 ? "changed" : "ok",
                    file_page_equals(shared_path, i, p) ? "agrees" : "disagrees");
            break;
        }
    }
    perms_of(shared, perms);
    WL_CHECK(strcmp(perms, "rw-s") == 0, "MAP_SHARED mapping has perms %s, expected rw-s", perms);
    /* Still the file's pages? Write on each side, read on the other. */
    fill_page(shared + 3 * PAGE, 0x6100);
    WL_CHECK(file_page_equals(shared_path, 3, shared + 3 * PAGE),
             "write through MAP_SHARED mapping not seen in the file (restored as private?)");
    {
        uint8_t page[PAGE];
        fill_page(page, 0x6200);
        int fd = open(shared_path, O_WRONLY | O_CLOEXEC);
        if (fd < 0 || pwrite(fd, page, PAGE, 5 * (off_t)PAGE) != (ssize_t)PAGE)
            wl_fail("pwrite(%s): %s", shared_path, strerror(errno));
        if (fd >= 0)
            close(fd);
        WL_CHECK(memcmp(page, shared + 5 * PAGE, PAGE) == 0,
                 "write to the file not seen through the MAP_SHARED mapping");
    }

    /* read-only */
    perms_of(ro, perms);
    WL_CHECK(strcmp(perms, "r--p") == 0, "read-only region has perms %s, expected r--p", perms);
    bad = wl_first_mismatch(ro, PROT_PAGES * PAGE, 0x5000);
    WL_CHECK(bad < 0, "read-only region differs at offset %ld", bad);

    /* PROT_NONE */
    perms_of(none, perms);
    WL_CHECK(strcmp(perms, "---p") == 0, "PROT_NONE region has perms %s, expected ---p", perms);
    if (mprotect(none, PROT_PAGES * PAGE, PROT_READ) != 0) {
        wl_fail("mprotect(PROT_NONE region, PROT_READ): %s", strerror(errno));
    } else {
        bad = wl_first_mismatch(none, PROT_PAGES * PAGE, 0x4000);
        WL_CHECK(bad < 0, "PROT_NONE region content differs at offset %ld", bad);
    }
}

static uint64_t frame_seed(int depth)
{
    return 0x5ac0000ULL + (uint64_t)depth * 7919;
}

/* Returns the number of frames whose local array was damaged. */
__attribute__((noinline)) static int recurse(int depth)
{
    volatile uint64_t local[16];
    uint64_t st = frame_seed(depth);
    for (int i = 0; i < 16; i++)
        local[i] = wl_rand(&st);

    int damaged;
    if (depth < DEPTH) {
        damaged = recurse(depth + 1);
    } else {
        wl_ready();
        while (!wl_term)
            wl_sleep_ns(10 * 1000 * 1000);
        wl_verify_common();
        verify_mappings();
        damaged = 0;
    }

    st = frame_seed(depth);
    for (int i = 0; i < 16; i++) {
        if (local[i] != wl_rand(&st)) {
            if (damaged == 0)
                fprintf(stderr, "memory: stack frame at depth %d damaged\n", depth);
            damaged++;
            break;
        }
    }
    return damaged;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "memory");
    setup();
    int damaged = recurse(0);
    WL_CHECK(damaged == 0, "%d of %d stack frames damaged", damaged, DEPTH + 1);
    wl_finish();
}
