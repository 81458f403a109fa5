/*
 * sleeper: blocked in one long syscall across the checkpoint.
 *
 * argv[3] selects the syscall:
 *   "nanosleep" (default)  a single nanosleep(1000 s);
 *   "pause"                a single pause().
 *
 * The SIGTERM handler only sets a flag (installed without SA_RESTART). The
 * syscall must return -1/EINTR because of that SIGTERM, and only then: a
 * restore that makes the syscall return early (0, or a spurious EINTR with no
 * signal) fails. For nanosleep the elapsed time must be below 1000 s and the
 * remaining time reported in `rem` must be in (0, 1000 s].
 */
#include "wl.h"

int main(int argc, char **argv)
{
    wl_init(argc, argv, "sleeper");
    const char *mode = argc > 3 ? argv[3] : "nanosleep";
    int use_pause = strcmp(mode, "pause") == 0;
    if (!use_pause && strcmp(mode, "nanosleep") != 0)
        wl_die("unknown mode %s", mode);

    double t0 = wl_monotonic();
    wl_ready();

    struct timespec req = {1000, 0}, rem = {-1, -1};
    int ret, err;
    if (use_pause)
        ret = pause();
    else
        ret = nanosleep(&req, &rem);
    err = errno;
    double elapsed = wl_monotonic() - t0;

    fprintf(stderr, "sleeper: %s returned %d (errno %d) after %.3f s, flag %d\n", mode, ret,
            ret < 0 ? err : 0, elapsed, (int)wl_term);

    wl_verify_common();
    WL_CHECK(ret == -1 && err == EINTR, "%s returned %d errno %d, expected -1/EINTR", mode, ret,
             ret < 0 ? err : 0);
    WL_CHECK(wl_term, "%s woke up without SIGTERM (spurious wakeup after restore?)", mode);
    WL_CHECK(elapsed < 1000.0, "slept %.1f s", elapsed);
    if (!use_pause && ret == -1 && err == EINTR) {
        int rem_ok = rem.tv_sec >= 0 && rem.tv_nsec >= 0 && rem.tv_nsec < 1000000000L &&
                     (rem.tv_sec > 0 || rem.tv_nsec > 0) &&
                     (rem.tv_sec < 1000 || (rem.tv_sec == 1000 && rem.tv_nsec == 0));
        WL_CHECK(rem_ok, "nanosleep rem is %lld.%09ld s, expected within (0, 1000]",
                 (long long)rem.tv_sec, rem.tv_nsec);
    }
    wl_finish();
}
