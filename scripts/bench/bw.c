/*
 * bw: benchmark workloads for scripts/bench.sh. Builds its state, prints
 * "ready" on stdout, then sleeps until killed (SIGTERM: verifies what it
 * can and exits 0 if intact, 1 if not).
 *
 *   bw vmas N      N separate one-page anonymous mappings, each written
 *   bw threads N   N threads (the main one included) asleep
 *   bw tree N      N processes (the root and N-1 children) asleep
 *   bw fds N       N fds of /dev/null
 *   bw mem MIB     MIB MiB of anonymous memory, every byte written
 *   bw half MIB    the same with the second half of every page zero
 *                  (compressible about 2:1)
 *   bw sparse GIB  a GIB GiB MAP_NORESERVE mapping, one page in 512 written
 *
 *   bw limits MIB FILE [RUNS]
 *                       prints this machine's limits for MIB MiB, in GB/s
 *                       (the best of RUNS runs after one not counted,
 *                       default 3):
 *                       write (4 MiB writes from memory, out of the CPU
 *                       caches, to FILE), read (4 MiB reads of FILE into
 *                       fresh memory), memcpy, and hot: the write of memory
 *                       just filled (partly still in the caches)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <fcntl.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096UL

static volatile sig_atomic_t term;
static void on_term(int s) { (void)s; term = 1; }

static void *sleeper(void *a) { (void)a; for (;;) pause(); return NULL; }

static uint64_t pattern(uint64_t i) { return i * 0x9e3779b97f4a7c15ULL + 1; }
static int half;
static uint64_t content(uint64_t i) { return half && (i & 511) >= 256 ? 0 : pattern(i); }

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static void *fresh(size_t len)
{
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
        perror("mmap");
        exit(2);
    }
    return p;
}

/* One measurement of the limits; see `limits`. */
static int limits_once(size_t len, const char *path, double *w, double *r, double *c,
                       double *hot)
{
    const size_t chunk = 4 << 20;
    uint64_t *src = fresh(len);
    for (size_t i = 0; i < len / 8; i++)
        src[i] = pattern(i);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        perror(path);
        return 2;
    }
    /* Written just after src was: its last part is still in the CPU
     * caches (this VM's L3 is 300 MiB), which a checkpointed process's
     * memory is not. Shown, not the limit. */
    double h0 = now();
    for (size_t off = 0; off < len; off += chunk)
        if (write(fd, (char *)src + off, chunk) != (ssize_t)chunk)
            return 2;
    double h1 = now();
    if (ftruncate(fd, 0) || lseek(fd, 0, SEEK_SET))
        return 2;
    /* The limit: src out of the caches first. */
    size_t evict_len = 1UL << 30;
    char *evict = fresh(evict_len);
    memset(evict, 1, evict_len);
    memset(evict, 2, evict_len);
    munmap(evict, evict_len);
    double t0 = now();
    for (size_t off = 0; off < len; off += chunk)
        if (write(fd, (char *)src + off, chunk) != (ssize_t)chunk)
            return 2;
    double t1 = now();
    char *dst = fresh(len);
    double t2 = now();
    for (size_t off = 0; off < len; off += chunk)
        if (pread(fd, dst + off, chunk, off) != (ssize_t)chunk)
            return 2;
    double t3 = now();
    char *cpy = fresh(len);
    memset(cpy, 1, len);
    double t4 = now();
    memcpy(cpy, dst, len);
    double t5 = now();
    close(fd);
    unlink(path);
    *w = len / (t1 - t0) / 1e9;
    *hot = len / (h1 - h0) / 1e9;
    *r = len / (t3 - t2) / 1e9;
    *c = len / (t5 - t4) / 1e9;
    int bad = memcmp(cpy, src, len) != 0;
    munmap(src, len);
    munmap(dst, len);
    munmap(cpy, len);
    return bad;
}

/* The best of `runs` runs of each (bench.sh runs one per round, between
 * the tools' runs, and takes the median of the rounds), after one run
 * not counted: this VM's memory is slow to use once idle, and a run
 * needs three times `len` of it (measured cold, between the tools' runs,
 * the read limit fell to a quarter). */
static int limits(size_t len, const char *path, int runs)
{
    double bw = 0, br = 0, bc = 0, bh = 0;
    for (int i = -1; i < runs; i++) {
        double w, r, c, h;
        if (limits_once(len, path, &w, &r, &c, &h))
            return 2;
        if (i < 0)
            continue;
        bw = w > bw ? w : bw;
        br = r > br ? r : br;
        bc = c > bc ? c : bc;
        bh = h > bh ? h : bh;
    }
    printf("write %.2f read %.2f memcpy %.2f hot %.2f\n", bw, br, bc, bh);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: bw vmas|threads|tree|fds|mem|sparse N\n");
        return 2;
    }
    const char *mode = argv[1];
    long n = atol(argv[2]);
    if (!strcmp(mode, "limits"))
        return argc > 3 ? limits((size_t)n << 20, argv[3], argc > 4 ? atoi(argv[4]) : 3) : 2;
    struct sigaction sa = {.sa_handler = on_term};
    sigaction(SIGTERM, &sa, NULL);
    char **maps = NULL;
    uint64_t *mem = NULL;
    size_t mem_words = 0;
    char *sparse = NULL;
    size_t sparse_len = 0;
    if (!strcmp(mode, "vmas")) {
        maps = calloc(n, sizeof(*maps));
        for (long i = 0; i < n; i++) {
            /* Alternate protections so neighbours never merge. */
            int prot = PROT_READ | (i % 2 ? PROT_WRITE : 0) | PROT_WRITE;
            maps[i] = mmap(NULL, PAGE, prot, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
            if (maps[i] == MAP_FAILED)
                return 2;
            maps[i][0] = (char)i;
            if (i % 2 == 0)
                mprotect(maps[i], PAGE, PROT_READ);
        }
    } else if (!strcmp(mode, "threads")) {
        for (long i = 1; i < n; i++) {
            pthread_t t;
            if (pthread_create(&t, NULL, sleeper, NULL))
                return 2;
        }
    } else if (!strcmp(mode, "tree")) {
        for (long i = 1; i < n; i++) {
            pid_t c = fork();
            if (c < 0)
                return 2;
            if (c == 0) {
                for (;;)
                    pause();
            }
        }
    } else if (!strcmp(mode, "fds")) {
        struct rlimit rl;
        getrlimit(RLIMIT_NOFILE, &rl);
        rl.rlim_cur = n + 64 < (long)rl.rlim_max ? (rlim_t)n + 64 : rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
        for (long i = 0; i < n; i++)
            if (open("/dev/null", O_RDONLY) < 0)
                return 2;
    } else if (!strcmp(mode, "mem") || !strcmp(mode, "half")) {
        half = !strcmp(mode, "half");
        mem_words = (size_t)n << 20 >> 3;
        mem = mmap(NULL, mem_words * 8, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED)
            return 2;
        for (size_t i = 0; i < mem_words; i++)
            mem[i] = content(i);
    } else if (!strcmp(mode, "sparse")) {
        sparse_len = (size_t)n << 30;
        sparse = mmap(NULL, sparse_len, PROT_READ | PROT_WRITE,
                      MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (sparse == MAP_FAILED)
            return 2;
        for (size_t off = 0; off < sparse_len; off += 512 * PAGE)
            sparse[off] = (char)(off >> 21) | 1;
    } else {
        return 2;
    }
    printf("ready\n");
    fflush(stdout);
    sigset_t none;
    sigemptyset(&none);
    while (!term)
        sigsuspend(&none);
    int bad = 0;
    if (maps)
        for (long i = 0; i < n; i++)
            bad |= maps[i][0] != (char)i;
    for (size_t i = 0; i < mem_words; i++)
        bad |= mem[i] != content(i);
    for (size_t off = 0; sparse && off < sparse_len; off += 512 * PAGE)
        bad |= sparse[off] != ((char)(off >> 21) | 1);
    printf("%s\n", bad ? "FAIL" : "PASS");
    return bad;
}
