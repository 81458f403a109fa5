/*
 * rseq: glibc's restartable-sequences registration survives the checkpoint.
 *
 * glibc >= 2.35 registers a struct rseq per thread at thread pointer +
 * __rseq_offset (<sys/rseq.h>). RESULT.rseq gets "registered OFFSET SIZE" or
 * "unavailable: WHY" (old glibc, no kernel support, or disabled by a tunable)
 * before ready; the harness skips loudly on the latter.
 *
 * Checked in the main thread and in a second thread, before ready (so the
 * checks are known to work here) and at verification (on SIGTERM):
 *   - cpu_id in the rseq area is >= 0 and equals the cpu the getcpu syscall
 *     reports (and sched_getcpu());
 *   - the kernel has this very area registered: rseq(area, len, 0, RSEQ_SIG)
 *     fails with EBUSY (it would succeed if nothing were registered, and fail
 *     with EINVAL for another area);
 *   - the kernel keeps the area up to date: pinned to each of (up to) two
 *     allowed cpus in turn, cpu_id follows (a restored but unregistered area
 *     would keep a stale value).
 */
#include "wl.h"

#include <pthread.h>
#include <sched.h>
#include <sys/syscall.h>

#if defined(__has_include)
#if __has_include(<sys/rseq.h>)
#include <sys/rseq.h>
#define HAVE_RSEQ 1
#endif
#endif

#ifdef HAVE_RSEQ

static unsigned reg_len; /* the registration length the kernel accepted as "ours" */

static volatile struct rseq *area(void)
{
    return (volatile struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

static int sys_getcpu(void)
{
    unsigned cpu = 0;
    if (syscall(SYS_getcpu, &cpu, NULL, NULL) != 0)
        return -1;
    return (int)cpu;
}

/* Appends a failure to buf (first one wins). */
static void note(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void note(char *buf, size_t len, const char *fmt, ...)
{
    if (buf[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

/* Is `area()` registered with the kernel? Sets reg_len on first success. */
static int probe(char *msg, size_t len, const char *who)
{
    unsigned lens[2] = {reg_len ? reg_len : 32, __rseq_size};
    for (int i = 0; i < 2; i++) {
        if (lens[i] == 0)
            continue;
        errno = 0;
        long r = syscall(SYS_rseq, (void *)area(), lens[i], 0, RSEQ_SIG);
        if (r == 0) {
            note(msg, len, "%s: rseq(area, %u) succeeded: no rseq area was registered", who,
                 lens[i]);
            return 0;
        }
        if (errno == EBUSY) {
            reg_len = lens[i];
            return 1;
        }
    }
    note(msg, len, "%s: rseq(area) probe did not report EBUSY (errno %d): another area or length "
                   "is registered",
         who, errno);
    return 0;
}

static void check_cpu(char *msg, size_t len, const char *who)
{
    for (int tries = 0; tries < 1000; tries++) {
        int a = area()->cpu_id;
        int s = sys_getcpu();
        int g = sched_getcpu();
        int b = area()->cpu_id;
        if (a < 0) {
            note(msg, len, "%s: rseq cpu_id is %d", who, a);
            return;
        }
        if (a == b && a == s && a == g)
            return;
    }
    note(msg, len, "%s: rseq cpu_id never agreed with getcpu()", who);
}

static void check_follows(char *msg, size_t len, const char *who)
{
    cpu_set_t allowed, one;
    if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) {
        note(msg, len, "%s: sched_getaffinity: %s", who, strerror(errno));
        return;
    }
    int done = 0;
    for (int c = 0; c < CPU_SETSIZE && done < 2; c++) {
        if (!CPU_ISSET(c, &allowed))
            continue;
        CPU_ZERO(&one);
        CPU_SET(c, &one);
        if (sched_setaffinity(0, sizeof(one), &one) != 0) {
            note(msg, len, "%s: sched_setaffinity(%d): %s", who, c, strerror(errno));
            break;
        }
        int id = area()->cpu_id, s = sys_getcpu();
        if (id != c || s != c)
            note(msg, len, "%s: pinned to cpu %d, rseq cpu_id says %d, getcpu %d (stale area?)",
                 who, c, id, s);
        done++;
    }
    sched_setaffinity(0, sizeof(allowed), &allowed);
}

static void check_all(char *msg, size_t len, const char *who)
{
    if (probe(msg, len, who)) {
        check_cpu(msg, len, who);
        check_follows(msg, len, who);
    }
}

static volatile int thread_go;
static char thread_msg[512];

static void *thread_main(void *arg)
{
    (void)arg;
    check_all(thread_msg, sizeof(thread_msg), "thread (before ready)");
    while (!__atomic_load_n(&thread_go, __ATOMIC_ACQUIRE))
        wl_sleep_ns(1000000);
    check_all(thread_msg, sizeof(thread_msg), "thread");
    return NULL;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "rseq");
    char path[4096], msg[512] = "";
    snprintf(path, sizeof(path), "%s.rseq", wl_result);
    FILE *f = fopen(path, "we");
    if (!f)
        wl_die("fopen(%s)", path);
    if (__rseq_size == 0 || (int32_t)area()->cpu_id < 0) {
        fprintf(f, "unavailable: glibc did not register rseq (__rseq_size %u, cpu_id %d)\n",
                __rseq_size, __rseq_size ? (int)(int32_t)area()->cpu_id : -1);
    } else {
        fprintf(f, "registered %td %u\n", __rseq_offset, __rseq_size);
    }
    if (fclose(f) != 0)
        wl_die("fclose(%s)", path);
    int available = __rseq_size != 0 && (int32_t)area()->cpu_id >= 0;

    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &term, &old) != 0)
        wl_die("sigprocmask");
    pthread_t th;
    if (available) {
        check_all(msg, sizeof(msg), "main (before ready)");
        if (msg[0])
            wl_die("%s", msg);
        if (pthread_create(&th, NULL, thread_main, NULL) != 0)
            wl_die("pthread_create");
    }

    wl_ready();
    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    if (available) {
        check_all(msg, sizeof(msg), "main");
        WL_CHECK(!msg[0], "%s", msg);
        __atomic_store_n(&thread_go, 1, __ATOMIC_RELEASE);
        pthread_join(th, NULL);
        WL_CHECK(!thread_msg[0], "%s", thread_msg);
    }
    wl_finish();
}

#else /* no <sys/rseq.h> */

int main(int argc, char **argv)
{
    wl_init(argc, argv, "rseq");
    char path[4096];
    snprintf(path, sizeof(path), "%s.rseq", wl_result);
    FILE *f = fopen(path, "we");
    if (!f || fprintf(f, "unavailable: <sys/rseq.h> missing (glibc < 2.35)\n") < 0 ||
        fclose(f) != 0)
        wl_die("writing %s", path);
    wl_ready();
    while (!wl_term)
        pause();
    wl_verify_common();
    wl_finish();
}

#endif
