/*
 * fpu: vector registers and FPU control state.
 *
 * The main loop calls an inline-asm round that loads known values into the
 * vector registers and then, thousands of times, stores each register and
 * compares it with the expected value (plus MXCSR and the x87 control word).
 * A round lasts a few milliseconds and the C code between rounds only checks
 * the SIGTERM flag, so a checkpoint almost always lands inside a round, with
 * the registers live: they must come back bit for bit.
 *
 * Register sets, the widest the CPU and kernel support:
 *   AVX-512 (avx512f+avx512bw): zmm0-zmm31 and the opmask registers k1-k7;
 *   AVX: ymm0-ymm15;
 *   otherwise SSE: xmm0-xmm15.
 *
 * Before ready the x87 control word is set to round-toward-zero and MXCSR to
 * round-up + flush-to-zero. Verification (on SIGTERM): no round ever saw a
 * mismatch, rounds kept running, both control registers still hold the values,
 * and the rounding/flush modes still act on real arithmetic.
 */
#include "wl.h"

#include <float.h>

#define ROUND_ITERS 4096

static uint64_t expect[32][8] __attribute__((aligned(64)));
static uint64_t expect_k[8] __attribute__((aligned(64)));
static uint64_t scratch[8] __attribute__((aligned(64)));
static uint32_t want_mxcsr, want_cw;

static volatile int mismatch_code;
static volatile uint64_t mismatches, rounds;

/* ---- SSE: xmm0-xmm15, 2 qwords each ---- */
#define XLOAD(n) "movdqu " #n "*64(%[e]), %%xmm" #n "\n\t"
#define XCHK(n)                                                                                    \
    "movdqu %%xmm" #n ", (%[s])\n\t"                                                               \
    "mov $" #n "+1, %%edx\n\t"                                                                     \
    "mov (%[s]), %%rax\n\tcmp " #n "*64(%[e]), %%rax\n\tjne 9f\n\t"                                \
    "mov 8(%[s]), %%rax\n\tcmp " #n "*64+8(%[e]), %%rax\n\tjne 9f\n\t"

/* ---- AVX: ymm0-ymm15, 4 qwords each ---- */
#define YLOAD(n) "vmovdqu " #n "*64(%[e]), %%ymm" #n "\n\t"
#define YCHK(n)                                                                                    \
    "vmovdqu %%ymm" #n ", (%[s])\n\t"                                                              \
    "mov $" #n "+1, %%edx\n\t"                                                                     \
    "mov (%[s]), %%rax\n\tcmp " #n "*64(%[e]), %%rax\n\tjne 9f\n\t"                                \
    "mov 8(%[s]), %%rax\n\tcmp " #n "*64+8(%[e]), %%rax\n\tjne 9f\n\t"                             \
    "mov 16(%[s]), %%rax\n\tcmp " #n "*64+16(%[e]), %%rax\n\tjne 9f\n\t"                           \
    "mov 24(%[s]), %%rax\n\tcmp " #n "*64+24(%[e]), %%rax\n\tjne 9f\n\t"

/* ---- AVX-512: zmm0-zmm31, 8 qwords each, and k1-k7 ---- */
#define ZLOAD(n) "vmovdqu64 " #n "*64(%[e]), %%zmm" #n "\n\t"
#define ZCHK(n)                                                                                    \
    "vmovdqu64 %%zmm" #n ", (%[s])\n\t"                                                            \
    "mov $" #n "+1, %%edx\n\t"                                                                     \
    "mov (%[s]), %%rax\n\tcmp " #n "*64(%[e]), %%rax\n\tjne 9f\n\t"                                \
    "mov 8(%[s]), %%rax\n\tcmp " #n "*64+8(%[e]), %%rax\n\tjne 9f\n\t"                             \
    "mov 16(%[s]), %%rax\n\tcmp " #n "*64+16(%[e]), %%rax\n\tjne 9f\n\t"                           \
    "mov 24(%[s]), %%rax\n\tcmp " #n "*64+24(%[e]), %%rax\n\tjne 9f\n\t"                           \
    "mov 32(%[s]), %%rax\n\tcmp " #n "*64+32(%[e]), %%rax\n\tjne 9f\n\t"                           \
    "mov 40(%[s]), %%rax\n\tcmp " #n "*64+40(%[e]), %%rax\n\tjne 9f\n\t"                           \
    "mov 48(%[s]), %%rax\n\tcmp " #n "*64+48(%[e]), %%rax\n\tjne 9f\n\t"                           \
    "mov 56(%[s]), %%rax\n\tcmp " #n "*64+56(%[e]), %%rax\n\tjne 9f\n\t"
#define KLOAD(n) "kmovq " #n "*8(%[k]), %%k" #n "\n\t"
#define KCHK(n)                                                                                    \
    "kmovq %%k" #n ", %%rax\n\t"                                                                   \
    "mov $200+" #n ", %%edx\n\t"                                                                   \
    "cmp " #n "*8(%[k]), %%rax\n\tjne 9f\n\t"

/* MXCSR (code 100) and x87 control word (code 101). */
#define CTRL_CHK                                                                                   \
    "stmxcsr (%[s])\n\t"                                                                           \
    "mov $100, %%edx\n\t"                                                                          \
    "mov (%[s]), %%eax\n\tcmp %[mx], %%eax\n\tjne 9f\n\t"                                          \
    "fnstcw (%[s])\n\t"                                                                            \
    "mov $101, %%edx\n\t"                                                                          \
    "movzwl (%[s]), %%eax\n\tcmp %[cw], %%eax\n\tjne 9f\n\t"

#define ALL16(M)                                                                                   \
    M(0) M(1) M(2) M(3) M(4) M(5) M(6) M(7) M(8) M(9) M(10) M(11) M(12) M(13) M(14) M(15)
#define UPPER16(M)                                                                                 \
    M(16) M(17) M(18) M(19) M(20) M(21) M(22) M(23) M(24) M(25) M(26) M(27) M(28) M(29) M(30) M(31)
#define K7(M) M(1) M(2) M(3) M(4) M(5) M(6) M(7)

#define XMM_CLOBBERS                                                                               \
    "xmm0", "xmm1", "xmm2", "xmm3", "xmm4", "xmm5", "xmm6", "xmm7", "xmm8", "xmm9", "xmm10",       \
        "xmm11", "xmm12", "xmm13", "xmm14", "xmm15"
#define XMM_HI_CLOBBERS                                                                            \
    "xmm16", "xmm17", "xmm18", "xmm19", "xmm20", "xmm21", "xmm22", "xmm23", "xmm24", "xmm25",      \
        "xmm26", "xmm27", "xmm28", "xmm29", "xmm30", "xmm31"

/* Each round returns 0, or the code of the first mismatching register. */
__attribute__((noinline)) static int round_sse(void)
{
    int bad;
    __asm__ volatile(ALL16(XLOAD) "mov %[n], %%rcx\n"
                                  "1:\n\t" ALL16(XCHK) CTRL_CHK "dec %%rcx\n\t"
                                  "jnz 1b\n\t"
                                  "xor %%edx, %%edx\n"
                                  "9:\n\t"
                     : "=&d"(bad)
                     : [e] "r"(expect), [s] "r"(scratch), [n] "r"((uint64_t)ROUND_ITERS),
                       [mx] "m"(want_mxcsr), [cw] "m"(want_cw)
                     : "rax", "rcx", "cc", "memory", XMM_CLOBBERS);
    return bad;
}

__attribute__((noinline, target("avx"))) static int round_avx(void)
{
    int bad;
    __asm__ volatile(ALL16(YLOAD) "mov %[n], %%rcx\n"
                                  "1:\n\t" ALL16(YCHK) CTRL_CHK "dec %%rcx\n\t"
                                  "jnz 1b\n\t"
                                  "xor %%edx, %%edx\n"
                                  "9:\n\t"
                                  "vzeroupper\n\t"
                     : "=&d"(bad)
                     : [e] "r"(expect), [s] "r"(scratch), [n] "r"((uint64_t)ROUND_ITERS),
                       [mx] "m"(want_mxcsr), [cw] "m"(want_cw)
                     : "rax", "rcx", "cc", "memory", XMM_CLOBBERS);
    return bad;
}

__attribute__((noinline, target("avx512f,avx512bw"))) static int round_avx512(void)
{
    int bad;
    __asm__ volatile(ALL16(ZLOAD) UPPER16(ZLOAD) K7(KLOAD) "mov %[n], %%rcx\n"
                                                           "1:\n\t" ALL16(ZCHK) UPPER16(ZCHK)
                                                               K7(KCHK) CTRL_CHK "dec %%rcx\n\t"
                                                           "jnz 1b\n\t"
                                                           "xor %%edx, %%edx\n"
                                                           "9:\n\t"
                                                           "vzeroupper\n\t"
                     : "=&d"(bad)
                     : [e] "r"(expect), [k] "r"(expect_k), [s] "r"(scratch),
                       [n] "r"((uint64_t)ROUND_ITERS), [mx] "m"(want_mxcsr), [cw] "m"(want_cw)
                     : "rax", "rcx", "cc", "memory", XMM_CLOBBERS, XMM_HI_CLOBBERS, "k1", "k2",
                       "k3", "k4", "k5", "k6", "k7");
    return bad;
}

static void describe(int code, char *buf, size_t len, int level)
{
    const char *kind = level == 3 ? "zmm" : level == 2 ? "ymm" : "xmm";
    if (code == 100)
        snprintf(buf, len, "MXCSR");
    else if (code == 101)
        snprintf(buf, len, "x87 control word");
    else if (code > 200)
        snprintf(buf, len, "k%d", code - 200);
    else
        snprintf(buf, len, "%s%d", kind, code - 1);
}

static uint32_t get_mxcsr(void)
{
    uint32_t v;
    __asm__ volatile("stmxcsr %0" : "=m"(v));
    return v;
}

static uint32_t get_cw(void)
{
    uint16_t v;
    __asm__ volatile("fnstcw %0" : "=m"(v));
    return v;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "fpu");

    __builtin_cpu_init();
    int level = 1;
    if (__builtin_cpu_supports("avx"))
        level = 2;
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw"))
        level = 3;
    int (*round_fn)(void) = level == 3 ? round_avx512 : level == 2 ? round_avx : round_sse;
    fprintf(stderr, "fpu: checking %s registers\n",
            level == 3 ? "zmm0-31 + k1-7" : level == 2 ? "ymm0-15" : "xmm0-15");

    uint64_t st = 0xf00dfacecafebeefULL;
    for (int r = 0; r < 32; r++)
        for (int q = 0; q < 8; q++)
            expect[r][q] = wl_rand(&st) | 1; /* never zero: a cleared register must show */
    for (int k = 0; k < 8; k++)
        expect_k[k] = wl_rand(&st) | 1;

    /* x87: rounding control (bits 10-11) = 11, round toward zero. */
    uint16_t cw = (uint16_t)get_cw();
    cw = (uint16_t)((cw & ~0x0C00) | 0x0C00);
    __asm__ volatile("fldcw %0" : : "m"(cw));
    want_cw = cw;
    /* SSE: rounding control (bits 13-14) = 10, round up; bit 15 flush-to-zero. */
    uint32_t mx = (get_mxcsr() & ~0x6000u) | 0x4000u | 0x8000u;
    __asm__ volatile("ldmxcsr %0" : : "m"(mx));
    want_mxcsr = mx;

    int bad = round_fn();
    if (bad != 0)
        wl_die("register check failed before ready (code %d): workload bug", bad);

    wl_ready();
    uint64_t rounds_at_ready = rounds;

    do { /* at least one round after ready, even if SIGTERM came at once */
        bad = round_fn();
        if (bad != 0) {
            if (mismatches++ == 0)
                mismatch_code = bad;
        }
        rounds++;
    } while (!wl_term);

    wl_verify_common();

    if (mismatches != 0) {
        char what[64];
        describe(mismatch_code, what, sizeof(what), level);
        wl_fail("asm loop saw %llu mismatching rounds, first in %s",
                (unsigned long long)mismatches, what);
    }
    WL_CHECK(rounds > rounds_at_ready, "no register-check round ran after ready");

    uint32_t cw_now = get_cw(), mx_now = get_mxcsr();
    WL_CHECK(cw_now == want_cw, "x87 control word 0x%04x, expected 0x%04x", cw_now, want_cw);
    WL_CHECK(mx_now == want_mxcsr, "MXCSR 0x%08x, expected 0x%08x", mx_now, want_mxcsr);

    /* The modes must still act on arithmetic, not just read back. */
    volatile double one = 1.0, three = 3.0;
    volatile double third = one / three;
    uint64_t bits;
    memcpy(&bits, (const void *)&third, sizeof(bits));
    WL_CHECK(bits == 0x3FD5555555555556ULL, "SSE 1.0/3.0 = 0x%016llx, round-up gives 0x3FD5555555555556",
             (unsigned long long)bits);
    volatile double tiny = DBL_MIN, half = 0.5;
    volatile double denormal = tiny * half;
    WL_CHECK(denormal == 0.0, "SSE DBL_MIN*0.5 = %a, flush-to-zero gives 0", denormal);
    volatile long double lone = 1.0L, lthree = 3.0L;
    volatile long double lthird = lone / lthree;
    uint64_t mant;
    memcpy(&mant, (const void *)&lthird, sizeof(mant));
    WL_CHECK(mant == 0xAAAAAAAAAAAAAAAAULL,
             "x87 1.0L/3.0L mantissa 0x%016llx, round-toward-zero gives 0xAAAAAAAAAAAAAAAA",
             (unsigned long long)mant);

    wl_finish();
}
