/*
 * tree: a process tree with a session, a process group, a pipe with bytes in
 * flight and a zombie.
 *
 *   R (root)        session leader (setsid, unless it already leads one).
 *   Z  child of R   exits with status 7 at once; R does not reap it until
 *                   verification (a zombie across the checkpoint).
 *   A  child of R   setpgid(0, 0): leads its own process group; forks G, then
 *                   blocks in waitpid(G).
 *   G  child of A   in A's group; writes a stream of consecutive 64-bit
 *                   sequence numbers (1, 2, 3, ...) into a pipe to R, 4 KiB
 *                   per write.
 *
 * R reads and checks the stream up to WARMUP records, then stops reading: the
 * pipe fills up and G blocks in write(). R waits until FIONREAD shows at least
 * IN_FLIGHT bytes queued, writes "R A G Z" pids to RESULT.pids, and is ready;
 * it then sleeps in sigsuspend. So at checkpoint time the pipe holds ~64 KiB.
 *
 * Verification (SIGTERM to R):
 *   - getsid/getpgid of R, A, G, Z and their parents (from /proc) as at start;
 *     Z is still a zombie;
 *   - the pipe still holds at least the bytes queued at ready; reading on, the
 *     stream continues with no gap or duplicate for all of those plus
 *     AFTER_RESTORE more records (so G writes after the restore);
 *   - G is alive; then R sends G SIGTERM: G checks its own pid/ppid/pgid/sid
 *     and exits 0 (else 1); A, in waitpid(G), gets that status, checks its own
 *     ids and exits 0 if all is well (else 1 + what failed); R requires A to
 *     exit 0 within 10 s;
 *   - waitpid(Z) reports exit status 7; no other child is left.
 *
 * argv[3] (optional) = exit code to use on PASS (default 0).
 */
#include "wl.h"

#include <sys/ioctl.h>
#include <sys/wait.h>

#define WARMUP 20000ULL
#define IN_FLIGHT 60000
#define AFTER_RESTORE 20000ULL
#define CHUNK 512 /* records per write: 4096 bytes = PIPE_BUF, atomic */

static volatile sig_atomic_t g_term;

static void g_on_term(int sig)
{
    (void)sig;
    g_term = 1;
}

/* ppid of `pid` from /proc, or -1. */
static pid_t ppid_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    char state;
    int ppid;
    if (!p || sscanf(p + 1, " %c %d", &state, &ppid) != 2)
        return -1;
    return ppid;
}

static char state_of(pid_t pid)
{
    char path[64], buf[512];
    snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return '?';
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return '?';
    buf[n] = 0;
    char *p = strrchr(buf, ')');
    return p && p[1] == ' ' ? p[2] : '?';
}

/* G: the producer. Never returns. */
static void producer(int wfd, pid_t a, pid_t r)
{
    struct sigaction sa;
    memset(&sa, 0, sizeof(sa));
    sa.sa_handler = g_on_term;
    sigaction(SIGTERM, &sa, NULL); /* no SA_RESTART: write() returns EINTR */
    pid_t me = getpid();

    uint64_t next = 1, buf[CHUNK];
    size_t have = 0, off = 0; /* bytes in buf, bytes of buf written */
    while (!g_term) {
        if (off == have) {
            for (size_t i = 0; i < CHUNK; i++)
                buf[i] = next++;
            have = sizeof(buf);
            off = 0;
        }
        ssize_t n = write(wfd, (char *)buf + off, have - off);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            fprintf(stderr, "tree G: write: %s\n", strerror(errno));
            _exit(3);
        }
        off += (size_t)n;
    }
    int bad = 0;
    if (getpid() != me)
        bad = 1, fprintf(stderr, "tree G: getpid %d, was %d\n", (int)getpid(), (int)me);
    if (getppid() != a)
        bad = 1, fprintf(stderr, "tree G: getppid %d, expected A %d\n", (int)getppid(), (int)a);
    if (getpgid(0) != a)
        bad = 1, fprintf(stderr, "tree G: pgid %d, expected A %d\n", (int)getpgid(0), (int)a);
    if (getsid(0) != r)
        bad = 1, fprintf(stderr, "tree G: sid %d, expected R %d\n", (int)getsid(0), (int)r);
    fprintf(stderr, "tree G: stopping after record %llu, %s\n", (unsigned long long)(next - 1),
            bad ? "FAIL" : "ok");
    _exit(bad);
}

/* A: group leader, parent of G. Never returns. */
static void middle(int wfd, pid_t r)
{
    if (setpgid(0, 0) != 0) {
        fprintf(stderr, "tree A: setpgid: %s\n", strerror(errno));
        _exit(20);
    }
    pid_t me = getpid();
    pid_t g = fork();
    if (g < 0)
        _exit(21);
    if (g == 0)
        producer(wfd, me, r);
    close(wfd);
    int st;
    pid_t w;
    while ((w = waitpid(g, &st, 0)) < 0 && errno == EINTR)
        ;
    int code = 0;
    if (w != g) {
        fprintf(stderr, "tree A: waitpid(G): %s\n", strerror(errno));
        code = 10;
    } else if (!WIFEXITED(st) || WEXITSTATUS(st) != 0) {
        fprintf(stderr, "tree A: G ended with status 0x%x\n", st);
        code = 11;
    }
    if (getpid() != me)
        code = 12, fprintf(stderr, "tree A: getpid %d, was %d\n", (int)getpid(), (int)me);
    if (getppid() != r)
        code = 13, fprintf(stderr, "tree A: getppid %d, expected R %d\n", (int)getppid(), (int)r);
    if (getpgid(0) != me)
        code = 14, fprintf(stderr, "tree A: pgid %d, expected %d\n", (int)getpgid(0), (int)me);
    if (getsid(0) != r)
        code = 15, fprintf(stderr, "tree A: sid %d, expected R %d\n", (int)getsid(0), (int)r);
    _exit(code);
}

/* R's view of the stream. */
static uint64_t expect_next = 1;
static unsigned char partial[8];
static size_t npartial;
static int stream_broken;

/* Reads what is available (blocking for at least one byte) and checks it. */
static ssize_t consume(int rfd)
{
    unsigned char buf[4096];
    ssize_t n = read(rfd, buf, sizeof(buf));
    if (n <= 0)
        return n;
    for (ssize_t i = 0; i < n; i++) {
        partial[npartial++] = buf[i];
        if (npartial == 8) {
            uint64_t v;
            memcpy(&v, partial, 8);
            npartial = 0;
            if (v != expect_next && !stream_broken) {
                stream_broken = 1;
                wl_fail("stream: got record %llu, expected %llu (gap or duplicate)",
                        (unsigned long long)v, (unsigned long long)expect_next);
            }
            expect_next = v + 1;
        }
    }
    return n;
}

static int queued(int fd)
{
    int n = -1;
    if (ioctl(fd, FIONREAD, &n) != 0)
        return -1;
    return n;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "tree");
    int pass_code = argc > 3 ? atoi(argv[3]) : 0;
    pid_t r = getpid();
    if (getsid(0) != r && setsid() < 0)
        wl_die("setsid");

    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &term, &old) != 0)
        wl_die("sigprocmask");

    pid_t z = fork();
    if (z < 0)
        wl_die("fork(Z)");
    if (z == 0)
        _exit(7);
    siginfo_t si;
    memset(&si, 0, sizeof(si));
    if (waitid(P_PID, (id_t)z, &si, WEXITED | WNOWAIT) != 0)
        wl_die("waitid(Z)");

    int p[2];
    if (pipe2(p, O_CLOEXEC) != 0)
        wl_die("pipe");
    pid_t a = fork();
    if (a < 0)
        wl_die("fork(A)");
    if (a == 0) {
        close(p[0]);
        sigprocmask(SIG_SETMASK, &old, NULL);
        middle(p[1], r);
    }
    setpgid(a, a); /* also done by A; whoever is first wins the race */
    close(p[1]);
    int rfd = p[0];

    /* G's pid: A's only child. */
    pid_t g = 0;
    double deadline = wl_monotonic() + 20;
    while (g <= 0) {
        char path[64];
        snprintf(path, sizeof(path), "/proc/%d/task/%d/children", (int)a, (int)a);
        char *kids = wl_read_file(path, NULL);
        if (kids) {
            g = atoi(kids);
            free(kids);
        }
        if (g <= 0) {
            if (wl_monotonic() > deadline)
                wl_die("A never forked G");
            wl_sleep_ns(1000000);
        }
    }
    while (getpgid(a) != a || getpgid(g) != a) {
        if (wl_monotonic() > deadline)
            wl_die("A/G never joined group %d", (int)a);
        wl_sleep_ns(1000000);
    }

    while (expect_next <= WARMUP) {
        if (consume(rfd) <= 0)
            wl_die("reading the stream");
    }
    /* Stop reading: G fills the pipe and blocks. */
    int in_flight;
    while ((in_flight = queued(rfd)) < IN_FLIGHT) {
        if (wl_monotonic() > deadline)
            wl_die("only %d bytes queued in the pipe", in_flight);
        wl_sleep_ns(1000000);
    }
    uint64_t received_at_ready = expect_next - 1;

    struct ids {
        pid_t pid, sid, pgid, ppid;
    } ids[4] = {{r, 0, 0, 0}, {a, 0, 0, 0}, {g, 0, 0, 0}, {z, 0, 0, 0}};
    const char *names[4] = {"R", "A", "G", "Z"};
    for (int i = 0; i < 4; i++) {
        ids[i].sid = getsid(ids[i].pid);
        ids[i].pgid = getpgid(ids[i].pid);
        ids[i].ppid = ppid_of(ids[i].pid);
    }
    if (ids[0].sid != r || ids[0].pgid != r || ids[1].sid != r || ids[1].pgid != a ||
        ids[1].ppid != r || ids[2].sid != r || ids[2].pgid != a || ids[2].ppid != a ||
        ids[3].sid != r || ids[3].pgid != r || ids[3].ppid != r || state_of(z) != 'Z')
        wl_die("tree not as designed");

    char path[4096];
    snprintf(path, sizeof(path), "%s.pids", wl_result);
    FILE *f = fopen(path, "we");
    if (!f)
        wl_die("fopen(%s)", path);
    fprintf(f, "%d %d %d %d\n", (int)r, (int)a, (int)g, (int)z);
    if (fclose(f) != 0)
        wl_die("fclose(%s)", path);
    fprintf(stderr, "tree: R %d A %d G %d Z %d; %llu records read, %d bytes in flight\n", (int)r,
            (int)a, (int)g, (int)z, (unsigned long long)received_at_ready, in_flight);

    wl_ready();

    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    for (int i = 0; i < 4; i++) {
        pid_t sid = getsid(ids[i].pid), pgid = getpgid(ids[i].pid), ppid = ppid_of(ids[i].pid);
        WL_CHECK(sid == ids[i].sid && pgid == ids[i].pgid,
                 "%s (%d): sid %d pgid %d, were %d %d", names[i], (int)ids[i].pid, (int)sid,
                 (int)pgid, (int)ids[i].sid, (int)ids[i].pgid);
        /* R's own parent is whoever restarted it. */
        if (i > 0)
            WL_CHECK(ppid == ids[i].ppid, "%s (%d): parent %d, was %d", names[i],
                     (int)ids[i].pid, (int)ppid, (int)ids[i].ppid);
    }
    WL_CHECK(state_of(z) == 'Z', "Z (%d) is in state %c, not a zombie", (int)z, state_of(z));
    char gs = state_of(g);
    WL_CHECK(kill(g, 0) == 0 && gs != 'Z' && gs != '?', "G (%d) is not alive (state %c)", (int)g,
             gs);

    int now_queued = queued(rfd);
    WL_CHECK(now_queued >= in_flight, "the pipe holds %d bytes, %d were queued at ready",
             now_queued, in_flight);
    uint64_t want = received_at_ready + (uint64_t)in_flight / 8 + AFTER_RESTORE;
    deadline = wl_monotonic() + 10;
    while (expect_next <= want && !stream_broken) {
        if (wl_monotonic() > deadline) {
            wl_fail("stream stalled at record %llu, wanted %llu",
                    (unsigned long long)(expect_next - 1), (unsigned long long)want);
            break;
        }
        if (consume(rfd) <= 0) {
            wl_fail("reading the stream after record %llu: %s",
                    (unsigned long long)(expect_next - 1), strerror(errno));
            break;
        }
    }
    fprintf(stderr, "tree: stream checked up to record %llu\n",
            (unsigned long long)(expect_next - 1));

    /* Shut the subtree down: G verifies itself, A reports both. */
    kill(g, SIGTERM);
    int st = 0;
    pid_t w = 0;
    deadline = wl_monotonic() + 10;
    while ((w = waitpid(a, &st, WNOHANG)) == 0 && wl_monotonic() < deadline)
        wl_sleep_ns(1000000);
    if (w != a)
        wl_fail("A (%d) did not exit within 10 s of SIGTERM to G (%s)", (int)a,
                w < 0 ? strerror(errno) : "timeout");
    else
        WL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0,
                 "A exited with status 0x%x (10/11: G failed or vanished, 12-15: A's ids; see "
                 "log)",
                 st);

    st = 0;
    w = waitpid(z, &st, WNOHANG);
    WL_CHECK(w == z, "waitpid(Z %d) returned %d (%s)", (int)z, (int)w,
             w < 0 ? strerror(errno) : "not a zombie any more?");
    if (w == z)
        WL_CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 7,
                 "Z's wait status is 0x%x, expected exit status 7", st);
    w = waitpid(-1, &st, WNOHANG);
    WL_CHECK(w < 0 && errno == ECHILD, "unexpected child %d left", (int)w);

    if (wl_failures == 0 && pass_code != 0) {
        /* PASS, with a chosen exit code. */
        int fd = open(wl_result, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
        if (fd < 0 || write(fd, "PASS\n", 5) != 5)
            wl_die("writing %s", wl_result);
        close(fd);
        fprintf(stderr, "tree: PASS (exit code %d)\n", pass_code);
        exit(pass_code);
    }
    wl_finish();
}
