/*
 * creds: a process that dropped root before the checkpoint.
 *
 *   argv[3] "same"   setgroups({100}), setresgid(65534 x3), setresuid(65534 x3)
 *           "mixed"  setgroups({100}), setresgid(65534, 65533, 65532),
 *                    setresuid(65534, 65533, 65532)
 *
 * The FIFO and the result file are opened before the ids change (the test
 * directory belongs to root); the result is written through the open fd.
 * After dropping, CapEff/CapPrm are empty and the process is not dumpable.
 *
 * Verification (SIGTERM): getresuid/getresgid/getgroups and the Cap* and
 * NoNewPrivs lines of /proc/self/status are exactly as at ready; setuid(0) and
 * setgroups() still fail with EPERM (no privilege came back); PR_GET_DUMPABLE
 * and PR_GET_KEEPCAPS are unchanged; plus the common checks.
 */
#include "wl.h"

#include <grp.h>
#include <sys/prctl.h>

static char status_at_ready[8][128];
static const char *status_keys[] = {"CapInh", "CapPrm", "CapEff", "CapBnd",
                                    "CapAmb", "NoNewPrivs", "Uid", "Gid"};

static void read_status(char out[8][128])
{
    char *s = wl_read_file("/proc/self/status", NULL);
    if (!s)
        wl_die("reading /proc/self/status");
    for (int i = 0; i < 8; i++) {
        out[i][0] = 0;
        size_t klen = strlen(status_keys[i]);
        for (char *line = s; line && *line;) {
            char *nl = strchr(line, '\n');
            if (strncmp(line, status_keys[i], klen) == 0 && line[klen] == ':') {
                size_t len = nl ? (size_t)(nl - line) : strlen(line);
                if (len >= 128)
                    len = 127;
                memcpy(out[i], line, len);
                out[i][len] = 0;
            }
            line = nl ? nl + 1 : NULL;
        }
    }
    free(s);
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "creds");
    int mixed = argc > 3 && strcmp(argv[3], "mixed") == 0;
    uid_t want_u[3] = {65534, mixed ? 65533 : 65534, mixed ? 65532 : 65534};
    gid_t want_g[3] = {65534, mixed ? 65533 : 65534, mixed ? 65532 : 65534};
    gid_t groups[1] = {100};

    sigset_t term, old;
    sigemptyset(&term);
    sigaddset(&term, SIGTERM);
    if (sigprocmask(SIG_BLOCK, &term, &old) != 0)
        wl_die("sigprocmask");

    int fifo = open(wl_fifo, O_WRONLY | O_CLOEXEC);
    if (fifo < 0)
        wl_die("open(%s)", wl_fifo);
    int result = open(wl_result, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (result < 0)
        wl_die("open(%s)", wl_result);

    if (setgroups(1, groups) != 0)
        wl_die("setgroups");
    if (setresgid(want_g[0], want_g[1], want_g[2]) != 0)
        wl_die("setresgid");
    if (setresuid(want_u[0], want_u[1], want_u[2]) != 0)
        wl_die("setresuid");

    uid_t u[3];
    gid_t g[3], grp[8];
    if (getresuid(&u[0], &u[1], &u[2]) != 0 || getresgid(&g[0], &g[1], &g[2]) != 0)
        wl_die("getresuid/getresgid");
    for (int i = 0; i < 3; i++)
        if (u[i] != want_u[i] || g[i] != want_g[i])
            wl_die("ids not as set");
    int ngroups = getgroups(8, grp);
    if (ngroups != 1 || grp[0] != 100)
        wl_die("groups not as set");
    int dumpable = prctl(PR_GET_DUMPABLE), keepcaps = prctl(PR_GET_KEEPCAPS);
    read_status(status_at_ready);
    fprintf(stderr, "creds: %s | %s | %s, dumpable %d\n", status_at_ready[6],
            status_at_ready[7], status_at_ready[2], dumpable);

    if (write(fifo, "ready\n", 6) != 6 || close(fifo) != 0)
        wl_die("writing ready");
    wl_nfds_at_ready = wl_list_fds(wl_fds_at_ready, WL_MAX_FDS);

    sigset_t wait_mask = old;
    sigdelset(&wait_mask, SIGTERM);
    while (!wl_term)
        sigsuspend(&wait_mask);

    wl_verify_common();
    uid_t u2[3];
    gid_t g2[3], grp2[8];
    getresuid(&u2[0], &u2[1], &u2[2]);
    getresgid(&g2[0], &g2[1], &g2[2]);
    WL_CHECK(memcmp(u, u2, sizeof(u)) == 0, "uids %u/%u/%u, were %u/%u/%u", u2[0], u2[1], u2[2],
             u[0], u[1], u[2]);
    WL_CHECK(memcmp(g, g2, sizeof(g)) == 0, "gids %u/%u/%u, were %u/%u/%u", g2[0], g2[1], g2[2],
             g[0], g[1], g[2]);
    int ngroups2 = getgroups(8, grp2);
    WL_CHECK(ngroups2 == 1 && grp2[0] == 100, "%d supplementary groups (first %u), expected {100}",
             ngroups2, ngroups2 > 0 ? grp2[0] : 0);
    char now[8][128];
    read_status(now);
    for (int i = 0; i < 8; i++)
        WL_CHECK(strcmp(now[i], status_at_ready[i]) == 0, "/proc/self/status: \"%s\", was \"%s\"",
                 now[i], status_at_ready[i]);
    errno = 0;
    WL_CHECK(setuid(0) == -1 && errno == EPERM, "setuid(0) did not fail with EPERM (errno %d)",
             errno);
    errno = 0;
    WL_CHECK(setgroups(0, NULL) == -1 && errno == EPERM,
             "setgroups() did not fail with EPERM (errno %d)", errno);
    WL_CHECK(prctl(PR_GET_DUMPABLE) == dumpable, "dumpable %d, was %d", prctl(PR_GET_DUMPABLE),
             dumpable);
    WL_CHECK(prctl(PR_GET_KEEPCAPS) == keepcaps, "keepcaps %d, was %d", prctl(PR_GET_KEEPCAPS),
             keepcaps);

    char buf[1200];
    int len = wl_failures == 0 ? snprintf(buf, sizeof(buf), "PASS\n")
                               : snprintf(buf, sizeof(buf), "FAIL: %s%s\n", wl_first_failure,
                                          wl_failures > 1 ? " (+more, see log)" : "");
    if (len >= (int)sizeof(buf))
        len = (int)sizeof(buf) - 1;
    if (pwrite(result, buf, (size_t)len, 0) != len)
        wl_die("writing the result");
    fprintf(stderr, "creds: %s", buf);
    exit(wl_failures == 0 ? 0 : 1);
}
