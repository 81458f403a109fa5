/*
 * other IMAGE: ckpt_checkpoint of another process (a child counting to 50
 * in 20 ms steps, then exiting 7), leaving it running: the call returns a
 * positive id, the child finishes as if nothing happened, and its image
 * restarts it where it was (it then exits 7 again). Prints "id N" and
 * "child exit 7"; exit 0 if both are right.
 */
#include <ckpt.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: other IMAGE\n");
        return 2;
    }
    int ready[2];
    if (pipe(ready) < 0)
        return 3;
    pid_t kid = fork();
    if (kid < 0)
        return 3;
    if (kid == 0) {
        close(ready[0]);
        /* Counting has begun: the parent may checkpoint. */
        if (write(ready[1], "r", 1) != 1)
            _exit(1);
        close(ready[1]);
        for (int i = 0; i < 50; i++) {
            struct timespec ts = {0, 20 * 1000 * 1000};
            nanosleep(&ts, NULL);
        }
        _exit(7);
    }
    close(ready[1]);
    char b;
    if (read(ready[0], &b, 1) != 1)
        return 3;
    close(ready[0]);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return 3;
    long r = ckpt_checkpoint(kid, fd, 0, -1);
    close(fd);
    printf("id %ld%s%s\n", r, r < 0 ? " " : "", r < 0 ? ckpt_last_error() : "");
    fflush(stdout);
    int st;
    if (waitpid(kid, &st, 0) != kid)
        return 3;
    printf("child exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return r > 0 && WIFEXITED(st) && WEXITSTATUS(st) == 7 ? 0 : 1;
}
