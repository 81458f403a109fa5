/*
 * threads: a multi-threaded process.
 *
 *   counter0..3  each increments its own __thread counter continuously (with a
 *                short nanosleep every 1000 increments) and mirrors it into a
 *                global array after every increment; each blocks SIGRTMIN+i
 *                in its own signal mask.
 *   cond         parked in pthread_cond_wait until main signals it.
 *   joiner       blocked in pthread_join(cond).
 *   mutex        blocked in pthread_mutex_lock on a mutex main holds.
 *   main         sleeps in sigsuspend (SIGTERM is blocked everywhere else, so
 *                main handles it).
 *
 * Before "ready" every thread has recorded gettid() and the address of its TLS
 * counter; RESULT.tids lists "ROLE TID" per thread (main first) for the harness.
 *
 * Verification (on SIGTERM): the set of threads in /proc/self/task is the one
 * at ready; every counter kept counting after the restore (two snapshots of the
 * mirrors 100 ms apart differ, neither is below the value at ready, the second
 * is above it); after stopping,
 * each counter thread checks gettid(), its TLS address, TLS counter == global
 * mirror and its signal mask; then the cond thread is signalled and must wake,
 * the joiner's join must complete, and the mutex waiter must get the mutex once
 * main unlocks it (all joins bounded by 10 s).
 */
#include "wl.h"

#include <pthread.h>
#include <sys/syscall.h>

#define NCOUNT 4
#define WARMUP 20000ULL

static __thread volatile uint64_t tls_counter;
static volatile uint64_t mirror[NCOUNT];
static volatile int stop_counting;

static pid_t counter_tid[NCOUNT];
static volatile uint64_t *counter_tls_addr[NCOUNT];
static volatile int counter_started[NCOUNT];

static pthread_mutex_t cond_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static int cond_waiting, cond_go;
static pid_t cond_tid, joiner_tid, mutex_tid;
static volatile int joiner_started, mutex_started;

static pthread_mutex_t held_mutex = PTHREAD_MUTEX_INITIALIZER;

static pthread_t counter_th[NCOUNT], cond_th, joiner_th, mutex_th;

static pid_t my_tid(void)
{
    return (pid_t)syscall(SYS_gettid);
}

/* A thread's verdict: empty string = fine. */
struct verdict {
    char msg[512];
    uint64_t final_count;
};

static struct verdict *new_verdict(void)
{
    struct verdict *v = calloc(1, sizeof(*v));
    if (!v)
        abort();
    return v;
}

static void vfail(struct verdict *v, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void vfail(struct verdict *v, const char *fmt, ...)
{
    if (v->msg[0])
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(v->msg, sizeof(v->msg), fmt, ap);
    va_end(ap);
}

/* The mask a thread should have: SIGTERM plus `extra` (0 = none). */
static void check_mask(struct verdict *v, const char *who, int extra)
{
    sigset_t cur;
    if (pthread_sigmask(SIG_SETMASK, NULL, &cur) != 0) {
        vfail(v, "%s: pthread_sigmask failed", who);
        return;
    }
    for (int s = 1; s < NSIG; s++) {
        int want = s == SIGTERM || (extra && s == extra);
        if (sigismember(&cur, s) != want) {
            vfail(v, "%s: signal %d is %sblocked, expected %sblocked", who, s,
                  sigismember(&cur, s) ? "" : "not ", want ? "" : "not ");
            return;
        }
    }
}

static void *counter_main(void *arg)
{
    int i = (int)(intptr_t)arg;
    sigset_t extra;
    sigemptyset(&extra);
    sigaddset(&extra, SIGRTMIN + i);
    pthread_sigmask(SIG_BLOCK, &extra, NULL);
    counter_tid[i] = my_tid();
    counter_tls_addr[i] = &tls_counter;
    __atomic_store_n(&counter_started[i], 1, __ATOMIC_RELEASE);

    while (!__atomic_load_n(&stop_counting, __ATOMIC_ACQUIRE)) {
        tls_counter++;
        mirror[i] = tls_counter;
        if (tls_counter % 1000 == 0)
            wl_sleep_ns(100000);
    }

    struct verdict *v = new_verdict();
    char who[32];
    snprintf(who, sizeof(who), "counter%d", i);
    v->final_count = tls_counter;
    if (my_tid() != counter_tid[i])
        vfail(v, "%s: gettid() is %d, was %d", who, (int)my_tid(), (int)counter_tid[i]);
    if (&tls_counter != counter_tls_addr[i])
        vfail(v, "%s: TLS counter moved from %p to %p", who, (void *)counter_tls_addr[i],
              (void *)&tls_counter);
    if (tls_counter != mirror[i])
        vfail(v, "%s: TLS counter %llu differs from its global mirror %llu", who,
              (unsigned long long)tls_counter, (unsigned long long)mirror[i]);
    check_mask(v, who, SIGRTMIN + i);
    return v;
}

static void *cond_main(void *arg)
{
    (void)arg;
    struct verdict *v = new_verdict();
    pid_t tid = my_tid();
    pthread_mutex_lock(&cond_mutex);
    cond_tid = tid;
    cond_waiting = 1;
    int wakeups = 0;
    while (!cond_go) {
        pthread_cond_wait(&cond, &cond_mutex);
        wakeups++;
    }
    pthread_mutex_unlock(&cond_mutex);
    if (my_tid() != tid)
        vfail(v, "cond: gettid() is %d, was %d", (int)my_tid(), (int)tid);
    check_mask(v, "cond", 0);
    fprintf(stderr, "threads: cond thread woke (%d wakeups)\n", wakeups);
    return v;
}

static void *joiner_main(void *arg)
{
    (void)arg;
    pid_t tid = my_tid();
    joiner_tid = tid;
    __atomic_store_n(&joiner_started, 1, __ATOMIC_RELEASE);
    void *cond_result = NULL;
    int rc = pthread_join(cond_th, &cond_result);
    struct verdict *v = new_verdict();
    if (rc != 0)
        vfail(v, "joiner: pthread_join(cond) failed: %s", strerror(rc));
    else if (!cond_result)
        vfail(v, "joiner: the cond thread returned nothing");
    else if (((struct verdict *)cond_result)->msg[0])
        vfail(v, "%s", ((struct verdict *)cond_result)->msg);
    free(cond_result);
    if (my_tid() != tid)
        vfail(v, "joiner: gettid() is %d, was %d", (int)my_tid(), (int)tid);
    check_mask(v, "joiner", 0);
    return v;
}

static void *mutex_main(void *arg)
{
    (void)arg;
    pid_t tid = my_tid();
    mutex_tid = tid;
    __atomic_store_n(&mutex_started, 1, __ATOMIC_RELEASE);
    int rc = pthread_mutex_lock(&held_mutex);
    struct verdict *v = new_verdict();
    if (rc != 0)
        vfail(v, "mutex: pthread_mutex_lock failed: %s", strerror(rc));
    else
        pthread_mutex_unlock(&held_mutex);
    if (my_tid() != tid)
        vfail(v, "mutex: gettid() is %d, was %d", (int)my_tid(), (int)tid);
    check_mask(v, "mutex", 0);
    return v;
}

/* Joins `th` within 10 s; returns its verdict or NULL (after a failure). */
static struct verdict *join_bounded(pthread_t th, const char *who)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_sec += 10;
    void *res = NULL;
    int rc = pthread_timedjoin_np(th, &res, &ts);
    if (rc != 0) {
        wl_fail("joining the %s thread: %s (still blocked after the restore?)", who,
                strerror(rc));
        return NULL;
    }
    if (!res) {
        wl_fail("the %s thread returned nothing", who);
        return NULL;
    }
    struct verdict *v = res;
    if (v->msg[0])
        wl_fail("%s", v->msg);
    return v;
}

static int list_tasks(pid_t *out, int max)
{
    DIR *d = opendir("/proc/self/task");
    if (!d)
        return -1;
    struct dirent *e;
    int n = 0;
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.')
            continue;
        if (n < max)
            out[n] = atoi(e->d_name);
        n++;
    }
    closedir(d);
    if (n > max)
        return -1;
    qsort(out, (size_t)n, sizeof(pid_t), wl_cmp_int);
    return n;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "threads");

    /* SIGTERM stays blocked in every thread; main takes it in sigsuspend. */
    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &term, &old) != 0)
        wl_die("sigprocmask");

    pthread_mutex_lock(&held_mutex);
    for (int i = 0; i < NCOUNT; i++)
        if (pthread_create(&counter_th[i], NULL, counter_main, (void *)(intptr_t)i) != 0)
            wl_die("pthread_create(counter%d)", i);
    if (pthread_create(&cond_th, NULL, cond_main, NULL) != 0)
        wl_die("pthread_create(cond)");
    if (pthread_create(&joiner_th, NULL, joiner_main, NULL) != 0)
        wl_die("pthread_create(joiner)");
    if (pthread_create(&mutex_th, NULL, mutex_main, NULL) != 0)
        wl_die("pthread_create(mutex)");

    /* Wait until every thread is in place and the counters are warm. */
    double deadline = wl_monotonic() + 20;
    for (;;) {
        int ok = joiner_started && mutex_started;
        for (int i = 0; i < NCOUNT; i++)
            ok = ok && __atomic_load_n(&counter_started[i], __ATOMIC_ACQUIRE) &&
                 mirror[i] >= WARMUP;
        pthread_mutex_lock(&cond_mutex);
        ok = ok && cond_waiting;
        pthread_mutex_unlock(&cond_mutex);
        if (ok)
            break;
        if (wl_monotonic() > deadline)
            wl_die("threads did not start within 20 s");
        wl_sleep_ns(1000000);
    }

    pid_t tids_at_ready[16];
    int ntids_at_ready = list_tasks(tids_at_ready, 16);
    if (ntids_at_ready != NCOUNT + 4)
        wl_die("expected %d threads, /proc/self/task lists %d", NCOUNT + 4, ntids_at_ready);

    char path[4096];
    snprintf(path, sizeof(path), "%s.tids", wl_result);
    FILE *f = fopen(path, "we");
    if (!f)
        wl_die("fopen(%s)", path);
    fprintf(f, "main %d\n", (int)my_tid());
    for (int i = 0; i < NCOUNT; i++)
        fprintf(f, "counter%d %d\n", i, (int)counter_tid[i]);
    fprintf(f, "cond %d\njoiner %d\nmutex %d\n", (int)cond_tid, (int)joiner_tid, (int)mutex_tid);
    if (fclose(f) != 0)
        wl_die("fclose(%s)", path);

    uint64_t at_ready[NCOUNT];
    for (int i = 0; i < NCOUNT; i++)
        at_ready[i] = mirror[i];
    pid_t main_tid = my_tid();

    wl_ready();

    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    WL_CHECK(my_tid() == main_tid && main_tid == wl_pid, "main: gettid() is %d, was %d",
             (int)my_tid(), (int)main_tid);

    pid_t tids_now[16];
    int ntids_now = list_tasks(tids_now, 16);
    int same = ntids_now == ntids_at_ready;
    for (int i = 0; same && i < ntids_now; i++)
        same = tids_now[i] == tids_at_ready[i];
    WL_CHECK(same, "/proc/self/task lists %d threads, not the %d at ready (or other tids)",
             ntids_now, ntids_at_ready);

    /* The counters run after the restore. */
    uint64_t s1[NCOUNT], s2[NCOUNT];
    for (int i = 0; i < NCOUNT; i++)
        s1[i] = mirror[i];
    wl_sleep_ns(100000000);
    for (int i = 0; i < NCOUNT; i++)
        s2[i] = mirror[i];
    for (int i = 0; i < NCOUNT; i++) {
        WL_CHECK(s1[i] >= at_ready[i], "counter%d: %llu went below its value at ready %llu", i,
                 (unsigned long long)s1[i], (unsigned long long)at_ready[i]);
        WL_CHECK(s2[i] > s1[i] && s2[i] > at_ready[i],
                 "counter%d does not count any more (stuck at %llu, %llu at ready)", i,
                 (unsigned long long)s2[i], (unsigned long long)at_ready[i]);
    }

    __atomic_store_n(&stop_counting, 1, __ATOMIC_RELEASE);
    for (int i = 0; i < NCOUNT; i++) {
        char who[32];
        snprintf(who, sizeof(who), "counter%d", i);
        struct verdict *v = join_bounded(counter_th[i], who);
        if (v) {
            WL_CHECK(v->final_count >= s2[i], "counter%d: final TLS value %llu below mirror %llu",
                     i, (unsigned long long)v->final_count, (unsigned long long)s2[i]);
            free(v);
        }
    }

    /* The parked threads. */
    pthread_mutex_lock(&cond_mutex);
    cond_go = 1;
    pthread_cond_signal(&cond);
    pthread_mutex_unlock(&cond_mutex);
    free(join_bounded(joiner_th, "joiner (joining cond)"));

    pthread_mutex_unlock(&held_mutex);
    free(join_bounded(mutex_th, "mutex"));

    int left = list_tasks(tids_now, 16);
    WL_CHECK(left == 1, "%d threads left after every join", left);
    wl_finish();
}
