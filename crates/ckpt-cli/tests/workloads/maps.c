/*
 * maps: argv[3] (default 2000) separate one-page private anonymous mappings,
 * their protections alternating (read-only, read-write) so that neighbours
 * never merge, each page filled from its own seed and checked whole at
 * verification. Many small page runs in one page record, next to the
 * thread's rseq area, which the kernel rewrites whenever the task runs on
 * another CPU.
 */
#include "wl.h"

#include <sys/mman.h>

#define SEED 0x3a9500000ULL

int main(int argc, char **argv)
{
    wl_init(argc, argv, "maps");
    long n = argc > 3 ? strtol(argv[3], NULL, 10) : 2000;
    uint8_t **maps = calloc(n, sizeof(*maps));
    if (!maps)
        wl_die("calloc");
    for (long i = 0; i < n; i++) {
        maps[i] = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (maps[i] == MAP_FAILED)
            wl_die("mmap %ld", i);
        wl_fill(maps[i], 4096, SEED + i);
        if (i % 2 == 0 && mprotect(maps[i], 4096, PROT_READ))
            wl_die("mprotect %ld", i);
    }
    wl_ready();
    wl_wait_term();
    wl_verify_common();
    for (long i = 0; i < n; i++) {
        long bad = wl_first_mismatch(maps[i], 4096, SEED + i);
        WL_CHECK(bad < 0, "mapping %ld differs from byte %ld on", i, bad);
    }
    wl_finish();
}
