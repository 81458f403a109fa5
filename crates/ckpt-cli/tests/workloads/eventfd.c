/*
 * eventfd: counters and flags of eventfds survive a restart.
 *
 *   plain  counter 0xfffffffe00000005 (more than the 32-bit initval
 *          eventfd() takes), blocking
 *   sem    EFD_SEMAPHORE|EFD_NONBLOCK with counter 3: reads 1 three times,
 *          then EAGAIN
 *   zero   EFD_NONBLOCK, counter 0: read gives EAGAIN
 *   dup    a dup of `plain` (one description: a write through one is read
 *          through the other)
 *   child  a child shares `shared` (counter 7) with the parent: after
 *          restart the child adds 10 and the parent reads 17
 * Verified on SIGTERM.
 */
#include "wl.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <sys/wait.h>

static int plain, sem, zero, dupfd, shared;
static pid_t child;
static int go[2];

static uint64_t xread(int fd)
{
    uint64_t v = 0;
    if (read(fd, &v, 8) != 8)
        return (uint64_t)-1;
    return v;
}

int main(int argc, char **argv)
{
    wl_init(argc, argv, "eventfd");
    plain = eventfd(0, 0);
    sem = eventfd(3, EFD_SEMAPHORE | EFD_NONBLOCK);
    zero = eventfd(0, EFD_NONBLOCK);
    shared = eventfd(7, EFD_NONBLOCK);
    if (plain < 0 || sem < 0 || zero < 0 || shared < 0)
        wl_die("eventfd");
    uint64_t big = 0xfffffffe00000005ull;
    if (write(plain, &big, 8) != 8)
        wl_die("write");
    dupfd = dup(plain);
    if (pipe(go) != 0)
        wl_die("pipe");
    child = fork();
    if (child == 0) {
        /* Waits for the parent's word (after restart), adds 10. */
        char c;
        close(go[1]);
        if (read(go[0], &c, 1) != 1)
            _exit(2);
        uint64_t ten = 10;
        _exit(write(shared, &ten, 8) == 8 ? 0 : 3);
    }
    close(go[0]);
    wl_install_term_handler();
    wl_ready();
    while (!wl_term)
        pause();

    wl_verify_common();
    struct pollfd p = {.fd = plain, .events = POLLIN};
    WL_CHECK(poll(&p, 1, 0) == 1 && (p.revents & POLLIN), "plain eventfd not readable");
    uint64_t one = 1;
    WL_CHECK(write(dupfd, &one, 8) == 8, "write through the dup");
    uint64_t v = xread(plain);
    WL_CHECK(v == big + 1, "plain counter %#llx, want %#llx", (unsigned long long)v,
             (unsigned long long)(big + 1));
    for (int i = 0; i < 3; i++) {
        v = xread(sem);
        WL_CHECK(v == 1, "semaphore read %d gave %llu", i, (unsigned long long)v);
    }
    WL_CHECK(read(sem, &v, 8) < 0 && errno == EAGAIN, "semaphore not empty or blocking");
    WL_CHECK(read(zero, &v, 8) < 0 && errno == EAGAIN, "zero eventfd readable or blocking");
    WL_CHECK(write(go[1], "g", 1) == 1, "wake the child");
    int st = 0;
    WL_CHECK(waitpid(child, &st, 0) == child && WIFEXITED(st) && WEXITSTATUS(st) == 0,
             "child status %#x", st);
    v = xread(shared);
    WL_CHECK(v == 17, "shared counter %llu, want 17", (unsigned long long)v);
    wl_finish();
}
