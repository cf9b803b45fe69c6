/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-worker: one process serving one virtual disk.  This header is
 * the worker's inside, shared by its parts: blkstack-worker.c (start-up,
 * signals, the state machine, shutdown) and worker-ctl.c (the control
 * socket, docs/control-protocol.txt).
 *
 * State machine (see docs/control-protocol.txt):
 *
 *   running --pause--> pausing --(no request in flight)--> paused
 *   paused --unpause--> running        pausing --unpause--> running
 *   any --shutdown/SIGTERM--> stopping --(drained, flushed)--> exit 0
 */
#ifndef BLKSTACK_WORKER_H
#define BLKSTACK_WORKER_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>

#include "blkstack/chain.h"
#include "blkstack/loop.h"
#include "blkstack/nbd-server.h"
#include "blkstack/syslog-client.h"
#include "worker-name.h"

enum worker_state {
	WORKER_RUNNING,
	WORKER_PAUSING,
	WORKER_PAUSED,
	WORKER_STOPPING,
};

struct worker_ctl;

/* Called when a pause completes (rc 0) or is abandoned (-ECANCELED). */
typedef void worker_pause_fn(void *arg, int rc);

struct worker {
	/* Configuration, fixed after start-up. */
	const char *name;
	const char *chain_str;
	char dir[PATH_MAX]; /* RUNDIR/NAME: pid, nbd.sock, ctl.sock */
	bool read_only;
	bool foreground;	   /* log to stderr, not syslog */
	struct bks_syslog *syslog; /* never blocks; NULL: stderr */
	unsigned int
	    ctl_idle_ms; /* --timeouts: control idle timeout, 0: default */

	/* Runtime. */
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct bks_nbd_server *nbd;
	struct worker_ctl *ctl;
	enum worker_state state;
	uint64_t started_ns;	     /* bks_now_ns() at start */
	uint64_t pauses;	     /* completed pauses */
	uint64_t paused_ns;	     /* total time paused (completed pauses) */
	uint64_t pause_start;	     /* when the current pause began */
	worker_pause_fn *pause_done; /* waiter of the pause under way */
	void *pause_arg;

	/* Shutdown (blkstack-worker.c). */
	struct bks_req flush_req;    /* the final flush of the chain */
	struct bks_timer stop_timer; /* gives up on clients that hang */
	int exit_code;
};

/* "running", "pausing", "paused", "stopping". */
const char *worker_state_name(enum worker_state state);

/* Log a line (stderr with --foreground, else syslog, without blocking:
 * a line the daemon does not take at once is dropped, and counted in
 * stats as worker.log_dropped). */
void worker_log(const struct worker *w, int prio, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Pause: hold new requests and call done(arg, 0) once none is in flight
 * (at once if already paused).  A second pause while pausing replaces the
 * waiter (the old one gets -ECANCELED).  Returns 0, or -ESHUTDOWN when
 * stopping.
 */
int worker_pause(struct worker *w, worker_pause_fn *done, void *arg);

/*
 * Unpause: submit what was held and go on.  Returns 0 (also when not
 * paused), or -ESHUTDOWN when stopping.  A pending pause waiter gets
 * -ECANCELED.
 */
int worker_unpause(struct worker *w);

/*
 * Shut down gracefully: stop taking requests, let in-flight ones finish,
 * flush the chain, remove the sockets and pid file, leave the loop; the
 * process then exits 0.  Idempotent.
 */
void worker_shutdown(struct worker *w);

/* ---- worker-ctl.c: the control socket ------------------------------------ */

/*
 * Serve the control protocol on listen_fd (listening, non-blocking; not
 * closed by the ctl).  Only root and the worker's own uid may talk to it
 * (SO_PEERCRED).  Returns 0 or -errno with err set.
 */
int worker_ctl_new(struct worker_ctl **out, struct worker *w, int listen_fd,
		   struct bks_error *err);

/* Close every control connection and free the ctl. */
void worker_ctl_free(struct worker_ctl *ctl);

#endif /* BLKSTACK_WORKER_H */
