/*
 * churn IMAGE: one thread creates and joins short-lived threads without
 * pause while the main thread checkpoints the process 40 times (leaving
 * it running). Threads that exit while the helper attaches are no part of
 * the process any more and must not fail the checkpoint. Prints
 * "fails N"; exits 0 if every checkpoint succeeded.
 */
#include <ckpt.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <unistd.h>

static atomic_int stop;

static void *nop(void *arg)
{
    return arg;
}

static void *churn(void *arg)
{
    while (!atomic_load(&stop)) {
        pthread_t t;
        if (pthread_create(&t, NULL, nop, NULL) == 0)
            pthread_join(t, NULL);
    }
    return arg;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: churn IMAGE\n");
        return 2;
    }
    pthread_t c;
    if (pthread_create(&c, NULL, churn, NULL) != 0)
        return 3;
    int fails = 0;
    for (int i = 0; i < 40; i++) {
        int fd = open(argv[1], O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
        if (fd < 0)
            return 3;
        long r = ckpt_checkpoint(0, fd, 0, -1);
        if (r != i + 1) {
            fails++;
            printf("checkpoint %d: %ld: %s\n", i + 1, r, ckpt_last_error());
        }
        close(fd);
    }
    atomic_store(&stop, 1);
    pthread_join(c, NULL);
    printf("fails %d\n", fails);
    return fails != 0;
}
