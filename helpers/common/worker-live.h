/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Is a worker alive?  One rule, for blkstack-ctl and the hotplug helper
 * (docs/control-protocol.txt, "Run directory"): the worker of DIR/NAME is
 * alive iff a process holds DIR/NAME/lock, which the worker keeps open
 * and flock()ed for its whole life.  The holder is the process named by
 * DIR/NAME/pid if, and only if, it has the lock file open: a pid file
 * that outlived its worker, a pid recycled by another process, and a
 * zombie (which holds no files) are all dead.  Nothing here takes the
 * lock (that would make a worker starting at the same moment fail) or
 * talks to the worker.
 */
#ifndef BLKSTACK_WORKER_LIVE_H
#define BLKSTACK_WORKER_LIVE_H

#include <sys/types.h>

#include "blkstack/error.h"

/*
 * How long worker_live() waits for a dead worker's last threads to exit
 * (and let go of its lock): they are being killed, so it takes
 * milliseconds, unless one is stuck in the kernel.
 */
#define WORKER_DYING_WAIT_MS 5000

/* The live worker process of a run directory entry. */
struct worker_proc {
	pid_t pid;		  /* the holder of the lock, 0 if none */
	unsigned long long start; /* its start time (/proc/PID/stat field 22) */
	pid_t file_pid;		  /* what DIR/NAME/pid says, 0 if nothing */
	char why[64]; /* dead (-ESRCH): the reason alone, "no pid file" */
};

/*
 * The worker of wdir (DIR/NAME).  Returns 0 when it is alive, with p
 * filled: pid and start name this one process for good (a pid alone may
 * be recycled).  Returns -ESRCH when it is not, err saying why ("no
 * worker in WDIR (no pid file)", "(pid N does not hold its lock)", ...)
 * and p->why the reason alone ("no pid file", "pid N is gone"), and
 * p->file_pid the stale pid if there was one; or another -errno (a pid
 * file that cannot be read, or -EINVAL: one that holds no pid).  Where
 * /proc/PID/fd may not be read (the worker is another user's), a live,
 * non-zombie pid counts as the holder.  The one wait: for a worker whose
 * main thread is a zombie while its other threads still exit (at most
 * WORKER_DYING_WAIT_MS), so that "dead" means its lock is free.
 */
int worker_live(const char *wdir, struct worker_proc *p, struct bks_error *err);

/*
 * The same rule for the worker's supervisor (docs/control-protocol.txt,
 * "Supervision"): alive iff the process named by DIR/NAME/supervisor.pid
 * holds DIR/NAME/supervisor.lock.  Returns as worker_live() does.
 */
int supervisor_live(const char *wdir, struct worker_proc *p,
		    struct bks_error *err);

/*
 * A pidfd of p's process, checked to be that very process (the same
 * start time) after it was opened: from then on a recycled pid cannot
 * be mistaken for it.  Returns the descriptor, -ESRCH if the process is
 * gone, or -errno (-ENOSYS without pidfds).
 */
int worker_pidfd(const struct worker_proc *p);

/*
 * Who a device made for the disk of wdir is bound to, as "PID:START" in
 * tok: the worker's supervisor if one is alive (it outlives the worker's
 * restarts, and a device made for it stays good across them: the
 * supervisor reconnects it), else the worker itself.  The worker must be
 * alive.  Returns 0, or worker_live()'s -ESRCH / -errno with err set.
 */
int worker_identity(const char *wdir, char *tok, size_t size,
		    struct bks_error *err);

#endif /* BLKSTACK_WORKER_LIVE_H */
