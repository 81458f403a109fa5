/*
 * ckpt_restart from C: restarts IMAGE, waits (at most 60 s) for the
 * restored root, which is our child, and exits with its status.
 *   restart IMAGE
 *   restart --bad-fd    ckpt_restart on a closed fd must fail with EBADF
 */
#include <ckpt.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: restart IMAGE | --bad-fd\n");
        return 2;
    }
    if (strcmp(argv[1], "--bad-fd") == 0) {
        pid_t p = ckpt_restart(1000, 0, -1);
        int e = errno;
        printf("ckpt_restart(closed fd) = %d, errno %d: %s\n", p, e, ckpt_last_error());
        return p == -1 && e == EBADF && *ckpt_last_error() ? 0 : 1;
    }
    int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        perror(argv[1]);
        return 2;
    }
    pid_t pid = ckpt_restart(fd, 0, 2);
    close(fd);
    if (pid < 0) {
        printf("ckpt_restart failed: %s: %s\n", strerror(errno), ckpt_last_error());
        return 2;
    }
    printf("restored as pid %d\n", pid);
    fflush(stdout);
    for (int i = 0; i < 6000; i++) {
        int st;
        pid_t r = waitpid(pid, &st, WNOHANG);
        if (r == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        if (r < 0) {
            perror("waitpid");
            return 2;
        }
        struct timespec ts = {0, 10 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    printf("restored process did not finish within 60 s\n");
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return 2;
}
