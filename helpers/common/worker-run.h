/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Starting and stopping workers (docs/control-protocol.txt, "Readiness"
 * and blkstack-ctl's create and destroy), for blkstack-ctl and the
 * hotplug helper alike.  Every message names the worker: "worker NAME:
 * REASON", the words blkstack-ctl prints after its own name and the
 * hotplug helper writes to hotplug-error.
 */
#ifndef BLKSTACK_WORKER_RUN_H
#define BLKSTACK_WORKER_RUN_H

#include <stdbool.h>
#include <sys/types.h>

#include "blkstack/error.h"

/* How long a new worker may take to open its chain and report ready. */
#define WORKER_READY_TIMEOUT_MS 30000
/* How long a worker may take to exit after `shutdown` or a failed start. */
#define WORKER_EXIT_TIMEOUT_MS 30000

/* What to start. */
struct worker_spec {
	const char *exe;    /* blkstack-worker (sibling_path) */
	const char *rundir; /* absolute */
	const char *name;   /* worker_name_valid() */
	const char *chain;
	bool read_only;
};

/*
 * Start a worker and wait until it serves: spawned directly (posix_spawn,
 * no shell, no PATH) in a session of its own with stdio on /dev/null,
 * reporting on a readiness pipe.  Returns 0 with *pid (no longer ours to
 * wait for: the caller must not reap it), or -errno: -EBUSY if a worker
 * of that name is alive already, else the worker's own errno and message
 * when it reported one, else this side's ("not ready within 30 s; killed
 * it", "exited with status 1 before it was ready").  A worker that failed
 * is reaped and its leftovers removed: nothing is left behind.
 */
int worker_start(const struct worker_spec *s, pid_t *pid,
		 struct bks_error *err);

/* What worker_stop() found. */
enum worker_stop_how {
	WORKER_STOPPED,	  /* it was running: shut down, exited, removed */
	WORKER_WAS_STALE, /* it was dead: its files removed */
	WORKER_ABSENT,	  /* there was nothing */
};

struct worker_stopped {
	enum worker_stop_how how;
	pid_t pid;		      /* the worker's (the stale pid), or 0 */
	char note[BKS_ERROR_MSG_MAX]; /* not STOPPED: what to tell the user */
};

/*
 * Stop worker name and remove DIR/NAME (`blkstack-ctl destroy`): if it
 * is alive (worker-live.h), `shutdown` and wait up to timeout_ms for the
 * process to exit (on a pidfd; without pidfds, for the control connection
 * to close); if it is dead, remove what it left.  Idempotent: nothing to
 * stop is success.  Returns 0 with *out filled, or -errno: a live worker
 * that does not answer is left alone.
 */
int worker_stop(const char *rundir, const char *name, int timeout_ms,
		struct worker_stopped *out, struct bks_error *err);

/*
 * Remove what a dead worker left in DIR/NAME, and the directory, holding
 * its lock so that files a live worker holds are never removed.  Returns
 * 0 (also when there is nothing, or when a new worker's files stand
 * there now), -EBUSY if a worker holds the lock, or -errno; err set
 * (without the worker's name).
 */
int worker_remove_files(const char *rundir, const char *name,
			struct bks_error *err);

#endif /* BLKSTACK_WORKER_RUN_H */
