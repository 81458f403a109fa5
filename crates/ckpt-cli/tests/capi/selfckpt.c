/*
 * Self-checkpoint through the C interface, from a process with two
 * threads: the worker checkpoints the process halfway through its chain
 * while the main thread is busy in its own (spinning in user space until
 * the call returns). Both finish and check their results against a run
 * without checkpoint; exit 0 if they match.
 *
 *   selfckpt IMAGE [IMAGE2]   with IMAGE2: a second checkpoint at 3/4;
 *                             a FIFO IMAGE is opened write-only (a stream)
 *   selfckpt --rdonly IMAGE   the image fd is read-only: the call must
 *                             fail with EBADF, the process carries on
 *   selfckpt --packet IMAGE   the process holds a packet socket, which
 *                             is refused once it is frozen: ENOTSUP
 *
 * Prints "taken N" / "resumed" for each call, then "result ... ok".
 */
#define _GNU_SOURCE
#include <ckpt.h>
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#define STEPS 4000000L

static uint64_t step(uint64_t x, long i)
{
    x = x * 6364136223846793005ULL + 1442695040888963407ULL + (uint64_t)i;
    return x ^ (x >> 29);
}

static const char *image, *image2;
static int rdonly, packet;
static atomic_int calls_done;
static uint64_t worker_acc = 1;
static int failed;

static long checkpoint_into(const char *path)
{
    /* A FIFO (read by someone else) is written as a stream. */
    struct stat st;
    int fifo = stat(path, &st) == 0 && S_ISFIFO(st.st_mode);
    int mode = rdonly ? O_RDONLY | O_CREAT : fifo ? O_WRONLY : O_RDWR | O_CREAT;
    int fd = open(path, mode | O_CLOEXEC, 0600);
    if (fd < 0) {
        perror(path);
        exit(3);
    }
    if (!rdonly && !fifo && ftruncate(fd, 0) < 0) {
        perror("ftruncate");
        exit(3);
    }
    long r = ckpt_checkpoint(0, fd, 0, -1);
    int e = errno;
    close(fd);
    if (r > 0)
        printf("taken %ld\n", r);
    else if (r == 0)
        printf("resumed\n");
    else
        printf("checkpoint failed: errno %d (%s): %s\n", e, strerror(e), ckpt_last_error());
    fflush(stdout);
    errno = e;
    return r;
}

static void *worker(void *arg)
{
    (void)arg;
    for (long i = 0; i < STEPS; i++) {
        if (i == STEPS / 2) {
            long r = checkpoint_into(image);
            if (rdonly ? !(r == -1 && errno == EBADF)
                       : packet ? !(r == -1 && errno == ENOTSUP) : r < 0)
                failed = 1;
        }
        if (image2 && i == 3 * STEPS / 4 && checkpoint_into(image2) < 0)
            failed = 1;
        worker_acc = step(worker_acc, i);
    }
    atomic_store(&calls_done, 1);
    return NULL;
}

int main(int argc, char **argv)
{
    int a = 1;
    if (a < argc && strcmp(argv[a], "--rdonly") == 0) {
        rdonly = 1;
        a++;
    } else if (a < argc && strcmp(argv[a], "--packet") == 0) {
        packet = 1;
        a++;
        if (socket(AF_PACKET, SOCK_DGRAM | SOCK_CLOEXEC, htons(ETH_P_ALL)) < 0) {
            perror("packet socket");
            return 3;
        }
    }
    if (a >= argc) {
        fprintf(stderr, "usage: selfckpt [--rdonly|--packet] IMAGE [IMAGE2]\n");
        return 2;
    }
    image = argv[a];
    image2 = a + 1 < argc ? argv[a + 1] : NULL;
    pthread_t t;
    if (pthread_create(&t, NULL, worker, NULL) != 0)
        return 3;
    uint64_t acc = 7;
    for (long i = 0; i < STEPS; i++) {
        /* Busy in user space while the worker's checkpoint runs. */
        if (i == STEPS / 2)
            while (!atomic_load(&calls_done))
                ;
        acc = step(acc, i);
    }
    pthread_join(t, NULL);
    uint64_t want_main = 7, want_worker = 1;
    for (long i = 0; i < STEPS; i++) {
        want_main = step(want_main, i);
        want_worker = step(want_worker, i);
    }
    int ok = !failed && acc == want_main && worker_acc == want_worker;
    printf("result %016llx %016llx %s\n", (unsigned long long)acc,
           (unsigned long long)worker_acc, ok ? "ok" : "WRONG");
    fflush(stdout);
    return ok ? 0 : 1;
}
