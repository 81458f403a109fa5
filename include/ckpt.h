/*
 * ckpt.h - checkpoint/restart of Linux processes, the C interface of
 * libckpt (link with -lckpt, or `pkg-config --cflags --libs ckpt`).
 *
 * The calls need the privileges of the `ckpt` command: ptrace over the
 * processes saved, and root to restart (pids are chosen with clone3).
 * They change no process-wide state of the caller (signal handlers and
 * masks, limits, environment). See docs/self-checkpoint.md.
 */
#ifndef CKPT_H
#define CKPT_H

#include <sys/types.h>

#ifdef __cplusplus
extern "C" {
#endif

/* Flags of ckpt_checkpoint(). */

/* Kill the checkpointed processes once the image is complete and synced;
 * without it they keep running. With pid 0 the call then returns only in
 * the process restarted from the image (with 0). */
#define CKPT_KILL 1UL
/* Include every descendant of the process. Without it, a process with
 * child processes is refused (they would be missing after restart). */
#define CKPT_TREE 2UL
/* Established TCP connections are closed with a killed tree and come back
 * reset, instead of being frozen in TCP repair mode and continued. */
#define CKPT_TCP_CLOSE 4UL

/*
 * Checkpoints the process `pid` (all its threads; with CKPT_TREE its
 * descendants too) into `fd`: a regular file, a pipe or a socket open for
 * writing (a regular file open O_RDWR is fastest: the frozen process
 * writes its own pages into it). `logfd` receives one line per event
 * ("[err N][pos P][pid X comm] message"), or -1 for no log.
 *
 * pid 0 is the calling process, from any of its threads: the other
 * threads are frozen with it and resume with it. A helper process forked
 * from the caller does the work while the calling thread waits inside
 * the call. Returns a positive id (1, 2, ... per process, counted on
 * across restarts; a failed call takes no number) once the image is
 * complete and the caller continues, and 0 in the process restarted from
 * that image (`ckpt restart IMAGE`).
 * In the restarted process, `fd` is /dev/null open for writing (the image
 * may have been renamed, removed or streamed away since).
 *
 * With CKPT_KILL the call returns once the killed processes' pids are
 * free, waiting at most 5 s for their parents to reap them: a child of the
 * caller stays a zombie until the caller reaps it.
 *
 * The helper is a fork of the caller: pthread_atfork handlers run, and the
 * caller gets a SIGCHLD when the helper exits (the call reaps it). One
 * self-checkpoint at a time per process.
 *
 * Returns -1 with errno set on failure (ckpt_last_error() says why); the
 * processes carry on as they were.
 */
long ckpt_checkpoint(pid_t pid, int fd, unsigned long flags, int logfd);

/*
 * Restarts the image read from `fd` (a file, pipe or socket) with its
 * original pids, and returns the restored root's pid once the restored
 * tree runs on its own. The root is a child of the caller: reap it with
 * waitpid(). `flags` must be 0. Returns -1 with errno set on failure; a
 * failed restart leaves no process behind.
 */
pid_t ckpt_restart(int fd, unsigned long flags, int logfd);

/*
 * The message of the calling thread's last failed call ("" if none). The
 * string stays valid until that thread's next failing call.
 */
const char *ckpt_last_error(void);

#ifdef __cplusplus
}
#endif

#endif /* CKPT_H */
