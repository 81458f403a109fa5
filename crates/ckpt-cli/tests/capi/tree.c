/*
 * Self-checkpoint of a process with a child: tree IMAGE FLAGS. The child
 * waits on a pipe from its parent and exits 42 when told; the parent
 * checkpoints itself with FLAGS (a number: CKPT_TREE = 2, CKPT_KILL = 1),
 * then tells the child to finish and reaps it. Prints "child PID" before
 * the call, "r=R errno=E" after it, and "child exit 42" at the end.
 */
#include <ckpt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 3) {
        fprintf(stderr, "usage: tree IMAGE FLAGS\n");
        return 2;
    }
    unsigned long flags = strtoul(argv[2], NULL, 0);
    int p[2];
    if (pipe(p) < 0)
        return 3;
    pid_t kid = fork();
    if (kid < 0)
        return 3;
    if (kid == 0) {
        close(p[1]);
        char b;
        if (read(p[0], &b, 1) != 1)
            _exit(1);
        _exit(42);
    }
    close(p[0]);
    printf("child %d\n", kid);
    fflush(stdout);
    int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return 3;
    long r = ckpt_checkpoint(0, fd, flags, -1);
    int e = r < 0 ? errno : 0;
    close(fd);
    printf("r=%ld errno=%d%s%s\n", r, e, r < 0 ? " " : "", r < 0 ? ckpt_last_error() : "");
    fflush(stdout);
    if (write(p[1], "x", 1) != 1)
        return 3;
    int st;
    if (waitpid(kid, &st, 0) != kid)
        return 3;
    printf("child exit %d\n", WIFEXITED(st) ? WEXITSTATUS(st) : -1);
    return 0;
}
