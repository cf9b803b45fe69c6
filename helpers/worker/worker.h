/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-worker: one process serving one virtual disk.  This header is
 * the worker's state, kept by blkstack-worker.c (start-up, signals, the
 * state machine, shutdown) and read by worker-ctl.c (the control socket,
 * docs/control-protocol.txt), which acts on the worker only through the
 * ops of worker-ctl.h.
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
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>

#include "blkstack/chain.h"
#include "blkstack/fuse-server.h"
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
struct worker_super;
struct worker_live;  /* worker-live.h: snapshot, reopen */
struct worker_job;   /* worker-job.h: commit, stream */
struct worker_blkif; /* worker-blkif.h: the guest's ring */

/* Called when a pause completes (rc 0) or is abandoned (-ECANCELED). */
typedef void worker_pause_fn(void *arg, int rc);

/*
 * Called when the guest's ring leaves "connected" (worker-blkif.h):
 * state is what info's blkif says now ("broken", "none"), why says how.
 */
typedef void worker_blkif_notify_fn(void *arg, const char *state,
				    const char *why);

struct worker {
	/* Configuration, fixed after start-up. */
	const char *name;
	/*
	 * The chain string served now: --chain, or DIR/NAME/chain when a
	 * worker this one replaces left it; it changes with the chain
	 * (snapshot, reopen, commit), kept in chain_buf.
	 */
	const char *chain_str;
	char chain_buf[BKS_CHAIN_STR_MAX + 2]; /* + the file's newline */
	char dir[PATH_MAX]; /* RUNDIR/NAME: pid, nbd.sock, ctl.sock */
	bool read_only;
	uint64_t meta_cache; /* conf meta-cache, for the chains it opens */
	/* --io-engine or conf io-engine, resolved (never AUTO): for the
	 * chains it opens, and reported by info and stats */
	enum bks_io_engine io_engine;
	/* --fuse-transport, resolved (never AUTO): asked of the FUSE
	 * export, and reported by info and stats */
	enum bks_fuse_transport fuse_transport;
	bool foreground;	   /* log to stderr, not syslog */
	struct bks_syslog *syslog; /* never blocks; NULL: stderr */
	unsigned int
	    ctl_idle_ms; /* --timeouts: control idle timeout, 0: default */

	/* Runtime. */
	struct bks_loop *loop;
	struct bks_chain *chain;
	struct bks_export *nbd;	    /* the NBD export (export.h) */
	struct bks_export *fuse;    /* --fuse-mount's export, or NULL */
	struct worker_blkif *blkif; /* blkif-connect's ring, or NULL */
	/* worker_blkif_set_notify(): the ring left "connected" */
	worker_blkif_notify_fn *blkif_notify;
	void *blkif_notify_arg;
	struct worker_ctl *ctl;
	struct worker_super *super; /* worker-super.h; NULL: unsupervised */
	enum worker_state state;
	uint64_t started_ns;	     /* bks_now_ns() at start */
	uint64_t pauses;	     /* completed pauses */
	uint64_t paused_ns;	     /* total time paused (completed pauses) */
	uint64_t pause_start;	     /* when the current pause began */
	worker_pause_fn *pause_done; /* waiter of the pause under way */
	void *pause_arg;
	bool started_paused; /* came up paused: DIR/NAME/paused was there */

	/* The live operations (worker-live.c, worker-job.c). */
	struct worker_live *live;
	struct worker_job *job;
	/* Log a line (the worker's log), for the parts outside main. */
	void (*vlog)(const struct worker *w, int prio, const char *fmt,
		     va_list ap);
	/*
	 * Called by worker-job.c when a job ends while the worker is
	 * stopping: the shutdown waits for it before the final flush.
	 */
	void (*job_stopped)(struct worker *w);

	/* Shutdown (blkstack-worker.c). */
	struct bks_req flush_req;    /* the final flush of the chain */
	struct bks_timer stop_timer; /* gives up on clients that hang */
	bool down_pending;	     /* clients gone; waiting for the job */
	bool fuse_down;		     /* the FUSE export has shut down */
	int exit_code;
};

/* "running", "pausing", "paused", "stopping". */
static inline const char *worker_state_name(enum worker_state state)
{
	static const char *const names[] = {
	    [WORKER_RUNNING] = "running",
	    [WORKER_PAUSING] = "pausing",
	    [WORKER_PAUSED] = "paused",
	    [WORKER_STOPPING] = "stopping",
	};

	return (unsigned int)state < sizeof(names) / sizeof(names[0])
		   ? names[state]
		   : "unknown";
}

/*
 * Age in ms at now (bks_now_ns()) of the oldest request in flight in w's
 * chain (bks_chain_oldest_ns()), 0 if none: the stats and info replies'
 * oldest_request_ms, and what a heartbeat reports as oldest_ms.
 */
static inline uint64_t worker_oldest_request_ms(const struct worker *w,
						uint64_t now)
{
	uint64_t t = w->chain ? bks_chain_oldest_ns(w->chain) : 0;

	return t && now > t ? (now - t) / 1000000u : 0;
}

/* Log through w->vlog. */
void worker_logf(const struct worker *w, int prio, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Set the chain string served now (w->chain_str) to the chain's own
 * layers as bks_chain_string() writes them.  Returns 0 or -errno.
 */
int worker_chain_refresh(struct worker *w);

#endif /* BLKSTACK_WORKER_H */
