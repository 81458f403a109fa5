/*
 * A long computation that checkpoints itself every N steps, so that a
 * crash costs at most N steps: restarted with `ckpt restart IMAGE`, it
 * resumes inside its last ckpt_checkpoint() call (which then returns 0)
 * and finishes with the same result as an uninterrupted run.
 *
 *   cc selfloop.c $(pkg-config --cflags --libs ckpt) -o selfloop
 *   sudo ./selfloop /var/tmp/selfloop.img --crash-at 7500000
 *   sudo ckpt restart /var/tmp/selfloop.img      # prints the same result
 *   ./selfloop --no-checkpoint                   # as an uninterrupted run
 *
 * Each image is written to IMAGE.tmp and renamed over IMAGE once complete,
 * so IMAGE is always a whole checkpoint.
 */
#include <ckpt.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define STEPS 10000000L
#define EVERY 2000000L

int main(int argc, char **argv)
{
    const char *image = NULL;
    long crash_at = -1;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--crash-at") == 0 && i + 1 < argc)
            crash_at = atol(argv[++i]);
        else if (strcmp(argv[i], "--no-checkpoint") != 0)
            image = argv[i];
    }
    char tmp[4096];
    if (image)
        snprintf(tmp, sizeof tmp, "%s.tmp", image);
    int resumed = 0;
    uint64_t x = 1;
    for (long step = 0; step < STEPS; step++) {
        if (image && step > 0 && step % EVERY == 0) {
            int fd = open(tmp, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
            if (fd < 0) {
                perror(tmp);
                return 1;
            }
            long id = ckpt_checkpoint(0, fd, 0, -1);
            int e = errno;
            close(fd);
            if (id > 0) {
                /* Only the original renames: it wrote the image. */
                if (rename(tmp, image) < 0)
                    perror("rename");
                printf("step %ld: checkpoint %ld taken\n", step, id);
            } else if (id == 0) {
                resumed = 1;
                printf("step %ld: resumed from the checkpoint\n", step);
            } else {
                fprintf(stderr, "step %ld: checkpoint failed (%s): %s\n", step, strerror(e),
                        ckpt_last_error());
            }
            fflush(stdout);
        }
        if (step == crash_at && !resumed) {
            printf("step %ld: crash!\n", step);
            fflush(stdout);
            _exit(1);
        }
        x = x * 6364136223846793005ULL + 1442695040888963407ULL + (uint64_t)step;
        x ^= x >> 29;
    }
    printf("result %016llx\n", (unsigned long long)x);
    return 0;
}
