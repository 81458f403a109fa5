/*
 * counters: plain CPU/memory state.
 *
 * Four counters, one each in the heap (malloc), on the stack (volatile local),
 * in TLS (__thread, reached through %fs) and in .bss (global), are incremented
 * together by the main loop, so at any instant between iterations they are
 * equal. A 64 MiB heap buffer (mmap-backed malloc chunk) holds a pseudo-random
 * pattern whose checksum is taken at setup. Every 1000th iteration the loop
 * appends the line "<counter/1000>\n" to an O_APPEND log file (RESULT.log).
 *
 * Verification (on SIGTERM): the counters are equal and larger than their
 * values at ready time; the buffer checksum is unchanged; the log holds exactly
 * the lines 1..counter/1000 (no gap: memory went back in time; no duplicate:
 * the process kept running after its memory was dumped).
 *
 * argv[3] == "socketpair": also hold a packet socket at fd 77 (a kind ckpt
 * refuses; used by the failure-path test).
 */
#include "wl.h"

#include <sys/socket.h>
#include <sys/stat.h>

#define BUF_SIZE (64UL << 20)
#define SEED 0x5eed1234abcdULL
#define SOCKET_FD 77
/* Iterations before "ready", so the counters are well away from zero. */
#define WARMUP 1000000ULL

static volatile uint64_t global_counter;
static __thread volatile uint64_t tls_counter;

static void check_log(const char *path, uint64_t counter)
{
    size_t len;
    char *data = wl_read_file(path, &len);
    if (!data) {
        wl_fail("cannot read log %s: %s", path, strerror(errno));
        return;
    }
    uint64_t expect = 1;
    char *p = data;
    while (*p) {
        char *end;
        unsigned long long v = strtoull(p, &end, 10);
        if (end == p || *end != '\n') {
            wl_fail("log line %llu is malformed", (unsigned long long)expect);
            free(data);
            return;
        }
        if (v != expect) {
            wl_fail("log line %llu holds %llu (gap or duplicate across the checkpoint?)",
                    (unsigned long long)expect, v);
            free(data);
            return;
        }
        expect++;
        p = end + 1;
    }
    free(data);
    WL_CHECK(expect - 1 == counter / 1000,
             "log has %llu lines but the counter says %llu (counter %llu)",
             (unsigned long long)(expect - 1), (unsigned long long)(counter / 1000),
             (unsigned long long)counter);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "counters");
    int with_socket = argc > 3 && strcmp(argv[3], "socketpair") == 0;

    volatile uint64_t stack_counter = 0;
    volatile uint64_t *heap_counter = malloc(sizeof(*heap_counter));
    if (!heap_counter)
        wl_die("malloc");
    *heap_counter = 0;

    uint8_t *buf = malloc(BUF_SIZE);
    if (!buf)
        wl_die("malloc(64 MiB)");
    wl_fill(buf, BUF_SIZE, SEED);
    const uint64_t sum_at_setup = wl_checksum(buf, BUF_SIZE);

    char logpath[4096];
    snprintf(logpath, sizeof(logpath), "%s.log", wl_result);
    int logfd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0)
        wl_die("open(%s)", logpath);

    if (with_socket) {
        /* A packet socket: a kind ckpt refuses (needs root, as the test). */
        int s = socket(AF_PACKET, SOCK_DGRAM, 0);
        if (s < 0)
            wl_die("socket(AF_PACKET)");
        if (dup2(s, SOCKET_FD) != SOCKET_FD)
            wl_die("dup2");
        close(s);
    }

    uint64_t ready_global = 0, ready_heap = 0, ready_tls = 0, ready_stack = 0;
    int is_ready = 0, write_errors = 0;

    for (;;) {
        global_counter++;
        (*heap_counter)++;
        tls_counter++;
        stack_counter++;

        uint64_t c = global_counter;
        if (c % 1000 == 0) {
            char line[32];
            int n = snprintf(line, sizeof(line), "%llu\n", (unsigned long long)(c / 1000));
            if (write(logfd, line, (size_t)n) != n)
                write_errors++;
            /* Spin about a third of the time, sleep the rest: the checkpoint
             * catches the process both in user code and in a syscall. */
            if ((c / 1000) % 100 == 0) {
                if (!is_ready && c >= WARMUP) {
                    ready_global = global_counter;
                    ready_heap = *heap_counter;
                    ready_tls = tls_counter;
                    ready_stack = stack_counter;
                    wl_ready();
                    is_ready = 1;
                }
                wl_sleep_ns(1000000);
            }
        }
        /* Stop on SIGTERM, but only after at least one iteration since ready
         * (the signal may come right away, in the sleep after ready). */
        if (wl_term && is_ready && global_counter > ready_global)
            break;
    }

    wl_verify_common();

    uint64_t g = global_counter, h = *heap_counter, t = tls_counter, s = stack_counter;
    WL_CHECK(g == h && h == t && t == s,
             "counters differ: global %llu heap %llu tls %llu stack %llu", (unsigned long long)g,
             (unsigned long long)h, (unsigned long long)t, (unsigned long long)s);
    WL_CHECK(g > ready_global, "global counter %llu not above its ready value %llu",
             (unsigned long long)g, (unsigned long long)ready_global);
    WL_CHECK(h > ready_heap, "heap counter %llu not above its ready value %llu",
             (unsigned long long)h, (unsigned long long)ready_heap);
    WL_CHECK(t > ready_tls, "tls counter %llu not above its ready value %llu",
             (unsigned long long)t, (unsigned long long)ready_tls);
    WL_CHECK(s > ready_stack, "stack counter %llu not above its ready value %llu",
             (unsigned long long)s, (unsigned long long)ready_stack);

    uint64_t sum_now = wl_checksum(buf, BUF_SIZE);
    if (sum_now != sum_at_setup) {
        long off = wl_first_mismatch(buf, BUF_SIZE, SEED);
        wl_fail("heap checksum 0x%016llx != 0x%016llx (first bad byte offset %ld)",
                (unsigned long long)sum_now, (unsigned long long)sum_at_setup, off);
    }

    WL_CHECK(write_errors == 0, "%d log writes failed", write_errors);
    check_log(logpath, g);

    if (with_socket) {
        struct stat st;
        WL_CHECK(fstat(SOCKET_FD, &st) == 0 && S_ISSOCK(st.st_mode), "fd %d is no longer a socket",
                 SOCKET_FD);
    }

    wl_finish();
}
