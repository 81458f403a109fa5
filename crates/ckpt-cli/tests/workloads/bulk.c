/*
 * bulk: argv[3] MiB of private anonymous memory, every byte from a seeded
 * generator, checked whole at verification (the first differing offset is
 * reported). With argv[4] "compressible", each page repeats one word of that
 * generator instead. For restores whose interest is the amount of page data:
 * streamed, compressed.
 */
#include "wl.h"

#include <sys/mman.h>

#define SEED 0x5eed0b01c

/* Each page is one word of the generator, repeated. */
static void fill_pages(uint8_t *mem, size_t len)
{
    uint64_t st = SEED, *p = (uint64_t *)mem;
    for (size_t pg = 0; pg < len / 4096; pg++) {
        uint64_t w = wl_rand(&st);
        for (size_t i = 0; i < 512; i++)
            p[pg * 512 + i] = w;
    }
}

static long pages_mismatch(const uint8_t *mem, size_t len)
{
    uint64_t st = SEED;
    const uint64_t *p = (const uint64_t *)mem;
    for (size_t pg = 0; pg < len / 4096; pg++) {
        uint64_t w = wl_rand(&st);
        for (size_t i = 0; i < 512; i++)
            if (p[pg * 512 + i] != w)
                return (long)((pg * 512 + i) * 8);
    }
    return -1;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "bulk");
    size_t mib = argc > 3 ? strtoul(argv[3], NULL, 10) : 64;
    size_t len = mib << 20;
    uint8_t *mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED)
        wl_die("mmap %zu MiB", mib);
    int compressible = argc > 4 && strcmp(argv[4], "compressible") == 0;
    if (compressible)
        fill_pages(mem, len);
    else
        wl_fill(mem, len, SEED);
    wl_ready();
    wl_wait_term();
    wl_verify_common();
    long bad = compressible ? pages_mismatch(mem, len) : wl_first_mismatch(mem, len, SEED);
    WL_CHECK(bad < 0, "%zu MiB of memory differ from offset %ld on", mib, bad);
    wl_finish();
}
