/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The workers of a run directory and their state, as `blkstack-ctl list`
 * shows them: alive by the one rule of worker-live.h, then asked for
 * `info` (a live worker that does not answer is "unreachable").
 */
#ifndef BLKSTACK_WORKER_LIST_H
#define BLKSTACK_WORKER_LIST_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"
#include "worker-name.h"

/* How long one worker may take to answer while listing. */
#define WORKER_LIST_TIMEOUT_MS 5000

/* One worker directory. */
struct worker_status {
	char name[WORKER_NAME_MAX + 1];
	pid_t pid;	/* the live worker's, or the stale one; 0: none */
	char state[32]; /* "running", ..., or "dead", "unreachable" */
	char chain[BKS_CHAIN_STR_MAX + 1]; /* live only */
	uint64_t size;			   /* live only */
	bool read_only;			   /* live only */
	bool live;			   /* alive and answered `info` */
	char why[BKS_ERROR_MSG_MAX];	   /* not live: why */

	/*
	 * From DIR/NAME/supervisor.state (docs/control-protocol.txt,
	 * "Supervision"), live or not; supervised false: there is none.
	 */
	bool supervised;
	char sup_state[16]; /* running, restarting, gave-up, stopping */
	pid_t sup_pid;	    /* the supervisor's pid (it may be gone) */
	bool sup_live;	    /* it holds supervisor.lock */
	unsigned int restarts;
	char last_exit[256]; /* why the worker last died, or "" */
	char hung[256];	     /* why it is hung now, or "" */
	char gave_up[256];   /* why the supervisor gave up, or "" */
};

/*
 * The status of worker name of rundir, its supervisor's too.  Never
 * fails: st says it all.
 */
void worker_status(const char *rundir, const char *name, int timeout_ms,
		   struct worker_status *st);

/*
 * Call fn for every worker directory of rundir (a directory with a valid
 * worker name), in name order, with its status; stop early if fn returns
 * non-zero, and return that.  A missing rundir has no workers.  Returns
 * 0, fn's value, or -errno with err set.
 */
int worker_list(const char *rundir, int timeout_ms,
		int (*fn)(const struct worker_status *st, void *arg), void *arg,
		struct bks_error *err);

#endif /* BLKSTACK_WORKER_LIST_H */
