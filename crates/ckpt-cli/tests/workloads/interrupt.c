/*
 * interrupt: a process that must come out unharmed of checkpoints whose
 * ckpt is killed or interrupted at any moment (tests/interrupt.rs).
 *
 * argv[3]: MiB of checksummed memory (default 256).
 *
 * 4 threads: main and 3 workers. Each has its own signal mask (workers
 * block SIGTERM, so it reaches main) and its own alternate signal stack,
 * and bumps its counter in `counters[]` (address printed as "counters
 * 0x..." on stderr, for the test to read through /proc/PID/mem). Main and
 * workers 1-2 spend their time in AVX rounds: ymm0-15 loaded with
 * thread-specific values and compared again and again, so a checkpoint
 * lands with them live; worker 3 sleeps 1 ms per count (mostly inside
 * clock_nanosleep). The masks and altstacks are only there to be checked.
 *
 * On SIGTERM: stop and join the workers; verify the memory, that no round
 * ever saw a register change, that each thread's mask and altstack are as
 * set, that every counter moved, and the common checks (pid, open fds).
 */
#include "wl.h"

#include <pthread.h>
#include <sys/mman.h>

#define NTHREADS 4
#define ROUND_ITERS 2048
#define ALTSTACK_SIZE (64 * 1024)

static volatile uint64_t counters[NTHREADS] __attribute__((aligned(4096)));
static volatile int stop;
static int have_avx;

struct tstate {
    int idx;
    sigset_t mask;
    void *alt;
    uint64_t expect[16][4] __attribute__((aligned(64)));
    uint64_t scratch[4] __attribute__((aligned(64)));
    uint64_t mismatches;
    int bad_reg;
    char fail[256];
};
static struct tstate ts[NTHREADS];

/* 0, or 1 + the index of the first ymm register that changed. */
__attribute__((noinline, target("avx"))) static int round_avx(struct tstate *t)
{
    int bad;
#define YLOAD(n) "vmovdqu " #n "*32(%[e]), %%ymm" #n "\n\t"
#define YCHK(n)                                                                                    \
    "vmovdqu %%ymm" #n ", (%[s])\n\t"                                                              \
    "mov $" #n "+1, %%edx\n\t"                                                                     \
    "mov (%[s]), %%rax\n\tcmp " #n "*32(%[e]), %%rax\n\tjne 9f\n\t"                                \
    "mov 8(%[s]), %%rax\n\tcmp " #n "*32+8(%[e]), %%rax\n\tjne 9f\n\t"                             \
    "mov 16(%[s]), %%rax\n\tcmp " #n "*32+16(%[e]), %%rax\n\tjne 9f\n\t"                           \
    "mov 24(%[s]), %%rax\n\tcmp " #n "*32+24(%[e]), %%rax\n\tjne 9f\n\t"
#define ALL16(M)                                                                                   \
    M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
    __asm__ volatile(ALL16(YLOAD) "mov %[n], %%rcx\n"
                                  "1:\n\t" ALL16(YCHK) "dec %%rcx\n\t"
                                  "jnz 1b\n\t"
                                  "xor %%edx, %%edx\n"
                                  "9:\n\t"
                                  "vzeroupper\n\t"
                     : "=&d"(bad)
                     : [e] "r"(t->expect), [s] "r"(t->scratch), [n] "r"((uint64_t)ROUND_ITERS)
                     : "rax", "rcx", "cc", "memory", "xmm0", "xmm1", "xmm2", "xmm3", "xmm4",
                       "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10", "xmm11", "xmm12", "xmm13",
                       "xmm14", "xmm15");
    return bad;
}

static void set_own_state(struct tstate *t)
{
    if (pthread_sigmask(SIG_SETMASK, &t->mask, NULL) != 0)
        wl_die("pthread_sigmask");
    stack_t ss = {.ss_sp = t->alt, .ss_size = ALTSTACK_SIZE, .ss_flags = 0};
    if (sigaltstack(&ss, NULL) != 0)
        wl_die("sigaltstack");
}

/* Checks a thread's own mask and altstack (runs in that thread). */
static void check_own_state(struct tstate *t)
{
    sigset_t cur;
    pthread_sigmask(SIG_BLOCK, NULL, &cur);
    for (int s = 1; s < 65; s++) {
        if (s == SIGKILL || s == SIGSTOP)
            continue;
        if (sigismember(&cur, s) != sigismember(&t->mask, s)) {
            snprintf(t->fail, sizeof(t->fail), "thread %d: signal %d %s in its mask", t->idx, s,
                     sigismember(&cur, s) ? "appeared" : "vanished");
            return;
        }
    }
    stack_t ss;
    if (sigaltstack(NULL, &ss) != 0 || ss.ss_sp != t->alt || ss.ss_size != ALTSTACK_SIZE ||
        ss.ss_flags != 0)
        snprintf(t->fail, sizeof(t->fail), "thread %d: altstack is %p/%zu/%d, was %p/%d/0",
                 t->idx, ss.ss_sp, ss.ss_size, ss.ss_flags, t->alt, ALTSTACK_SIZE);
}

static void work(struct tstate *t)
{
    while (!stop && !(t->idx == 0 && wl_term)) {
        if (t->idx == 3 || !have_avx) {
            wl_sleep_ns(1000000);
        } else {
            int bad = round_avx(t);
            if (bad) {
                t->mismatches++;
                t->bad_reg = bad - 1;
            }
        }
        counters[t->idx]++;
    }
}

static volatile int started;

static void *worker(void *arg)
{
    struct tstate *t = arg;
    set_own_state(t);
    __atomic_add_fetch(&started, 1, __ATOMIC_SEQ_CST);
    work(t);
    check_own_state(t);
    return NULL;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "interrupt");
    size_t mib = argc > 3 ? (size_t)atoi(argv[3]) : 256;
    size_t len = mib << 20;
    have_avx = __builtin_cpu_supports("avx");
    char *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        wl_die("mmap %zu MiB", mib);
    wl_fill(mem, len, 0x1234567);

    int blocked[NTHREADS][3] = {
        {SIGUSR1, SIGRTMIN + 2, 0},
        {SIGTERM, SIGUSR2, SIGHUP},
        {SIGTERM, SIGWINCH, SIGRTMIN + 1},
        {SIGTERM, SIGALRM, SIGRTMIN + 3},
    };
    uint64_t seed = 99;
    for (int i = 0; i < NTHREADS; i++) {
        struct tstate *t = &ts[i];
        t->idx = i;
        sigemptyset(&t->mask);
        for (int j = 0; j < 3; j++)
            if (blocked[i][j])
                sigaddset(&t->mask, blocked[i][j]);
        t->alt = malloc(ALTSTACK_SIZE);
        for (int r = 0; r < 16; r++)
            for (int q = 0; q < 4; q++)
                t->expect[r][q] = wl_rand(&seed);
    }
    /* Workers start with everything blocked and set their own masks. */
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    pthread_t th[NTHREADS];
    for (int i = 1; i < NTHREADS; i++)
        if (pthread_create(&th[i], NULL, worker, &ts[i]) != 0)
            wl_die("pthread_create");
    set_own_state(&ts[0]);
    while (__atomic_load_n(&started, __ATOMIC_SEQ_CST) != NTHREADS - 1)
        wl_sleep_ns(1000000);
    fprintf(stderr, "interrupt: counters %p\n", (void *)counters);
    wl_ready();

    work(&ts[0]);
    stop = 1;
    for (int i = 1; i < NTHREADS; i++)
        pthread_join(th[i], NULL);
    check_own_state(&ts[0]);

    wl_verify_common();
    long bad = wl_first_mismatch(mem, len, 0x1234567);
    WL_CHECK(bad < 0, "memory differs at offset %ld of %zu MiB", bad, mib);
    for (int i = 0; i < NTHREADS; i++) {
        struct tstate *t = &ts[i];
        WL_CHECK(t->fail[0] == 0, "%s", t->fail);
        WL_CHECK(t->mismatches == 0, "thread %d: ymm%d changed under it (%llu rounds)", i,
                 t->bad_reg, (unsigned long long)t->mismatches);
        WL_CHECK(counters[i] > 0, "thread %d never counted", i);
    }
    wl_finish();
}
