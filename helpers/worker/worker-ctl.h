/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's control socket (worker-ctl.c, docs/control-protocol.txt),
 * as blkstack-worker.c starts it.  The ctl reads the worker's state
 * (struct worker, worker.h) for its replies and acts on the worker only
 * through the ops it is given: it never calls blkstack-worker.c.
 */
#ifndef BLKSTACK_WORKER_CTL_H
#define BLKSTACK_WORKER_CTL_H

#include <stdarg.h>

#include "blkstack/error.h"
#include "worker.h"

struct worker_ctl;

/*
 * What the ctl calls up to the worker for.  All required; called from the
 * loop, inside a command's handling (pause, unpause, log) or from a
 * deferred call after the reply (shutdown).
 */
struct worker_ctl_ops {
	/* Log a line (the worker's log: stderr or syslog). */
	void (*log)(const struct worker *w, int prio, const char *fmt,
		    va_list ap);
	/*
	 * Pause: hold new requests and call done(arg, 0) once none is in
	 * flight (at once if already paused).  A second pause while pausing
	 * replaces the waiter (the old one gets -ECANCELED).  Returns 0, or
	 * -ESHUTDOWN when stopping.
	 */
	int (*pause)(struct worker *w, worker_pause_fn *done, void *arg);
	/*
	 * Unpause: submit what was held and go on.  Returns 0 (also when
	 * not paused), or -ESHUTDOWN when stopping.  A pending pause waiter
	 * gets -ECANCELED.
	 */
	int (*unpause)(struct worker *w);
	/*
	 * Forget the pause waiter (done, arg) if it is still the registered
	 * one, without calling it (the ctl is going away).
	 */
	void (*pause_forget)(struct worker *w, worker_pause_fn *done,
			     void *arg);
	/*
	 * Shut down gracefully: stop taking requests, let in-flight ones
	 * finish, flush the chain, leave the loop.  Idempotent.  May free
	 * the ctl (worker_ctl_free) before it returns.
	 */
	void (*shutdown)(struct worker *w);
};

/*
 * Serve the control protocol on listen_fd (listening, non-blocking; not
 * closed by the ctl) for w, acting through ops (kept, not copied).  Only
 * root and the worker's own uid may talk to it (SO_PEERCRED).  Returns 0
 * or -errno with err set.
 */
int worker_ctl_new(struct worker_ctl **out, struct worker *w,
		   const struct worker_ctl_ops *ops, int listen_fd,
		   struct bks_error *err);

/* Close every control connection and free the ctl. */
void worker_ctl_free(struct worker_ctl *ctl);

#endif /* BLKSTACK_WORKER_CTL_H */
