/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Waiting for processes: for one that a pidfd pins (any process), and
 * for our own children (reaping them).  Every wait is bounded.
 */
#ifndef BLKSTACK_CHILD_H
#define BLKSTACK_CHILD_H

#include <stddef.h>
#include <sys/types.h>

/*
 * Wait up to timeout_ms (0: just look) for the process of pidfd to exit.
 * Returns 0 once it has, -ETIMEDOUT, or -errno.
 */
int pidfd_wait(int pidfd, int timeout_ms);

/*
 * Reap our child pid: wait up to timeout_ms for it to exit (on a pidfd;
 * without pidfds, by looking every 10 ms), SIGKILL it if it has not, and
 * collect its status into *status (may be NULL).  Returns 0, or -errno
 * from waitpid (-ECHILD: not our child, or reaped already).
 */
int child_reap(pid_t pid, int timeout_ms, int *status);

/*
 * Reap our child pid, waiting as long as it takes (for a child that is
 * known to end: killed, or bounded by itself).  status may be NULL.
 * Returns 0 or -errno from waitpid.
 */
int child_wait(pid_t pid, int *status);

/*
 * Reap our child pid if it has exited, without waiting.  Returns 1 if it
 * was reaped, 0 if it still runs, or -errno (-ECHILD: not our child).
 */
int child_try_reap(pid_t pid, int *status);

/* "exited with status 3", "killed by signal 9 (Killed)". */
void child_describe(int status, char *buf, size_t size);

#endif /* BLKSTACK_CHILD_H */
