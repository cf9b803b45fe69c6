/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's blkif ring export (worker-blkif.c): a Xen guest's blkfront
 * served over its shared ring, next to the NBD export, on the same chain
 * (docs/ring-backend.txt).  The worker never reads xenstore: blkstack-xenbus
 * reads the frontend's ring nodes and hands them over with the control
 * command `blkif-connect`, and takes the ring back with `blkif-disconnect`
 * (docs/control-protocol.txt).  One ring per worker at a time.
 *
 * Called by worker-ctl.c (the commands, info and stats) and by
 * blkstack-worker.c (its shutdown takes the ring down before the final
 * flush).  Everything runs on the worker's loop; nothing here blocks
 * (the grant and event-channel calls are ioctls that do not sleep).
 */
#ifndef BLKSTACK_WORKER_BLKIF_H
#define BLKSTACK_WORKER_BLKIF_H

#include <stdbool.h>
#include <stdint.h>

#include "bks-blkif.h"
#include "blkstack/error.h"
#include "json.h"
#include "worker.h"

/* Most ring pages (max-ring-page-order 4). */
#define WORKER_BLKIF_MAX_REFS (1u << BKS_BLKIF_MAX_RING_ORDER)

/* blkif-connect's arguments, parsed and checked. */
struct worker_blkif_args {
	uint32_t domid; /* the frontend's domain */
	uint32_t port;	/* its event channel */
	uint32_t refs[WORKER_BLKIF_MAX_REFS];
	unsigned int order; /* log2 of the number of refs */
	enum bks_blkif_abi abi;
	bool read_only; /* MODE "r" */
};

/*
 * Parse `blkif-connect DOMID PORT REFS PROTOCOL MODE` (argv[0] is the
 * command).  Pure.  Returns 0, or -EINVAL with err naming the argument.
 */
int worker_blkif_parse(int argc, char **argv, struct worker_blkif_args *out,
		       struct bks_error *err);

/*
 * Serve the ring of a: open the grant and event-channel devices, map the
 * ring, make the export on w's chain (read-only if a or the worker says
 * so), watch the event channel, start.  *feat gets what the xenstore side
 * writes for the frontend.  Returns 0, or -errno with err set: -EBUSY (a
 * ring is connected), -ESHUTDOWN (the worker is stopping), or the failing
 * call's (no /dev/xen here: -ENOENT).
 */
int worker_blkif_connect(struct worker *w, const struct worker_blkif_args *a,
			 struct bks_blkif_features *feat,
			 struct bks_error *err);

/* worker_blkif_disconnect(): no ring was connected (done not called). */
#define WORKER_BLKIF_IDLE 1

/*
 * Take the ring down: no more requests are taken, what is in the chain
 * completes onto the ring, then the channel is unbound and the ring
 * unmapped, and done(arg) is called from a deferred call of the loop.
 * Returns 0 (done will come; a second call while one is under way
 * replaces done), or WORKER_BLKIF_IDLE.
 */
int worker_blkif_disconnect(struct worker *w, void (*done)(void *arg),
			    void *arg);

/*
 * Free whatever ring is left without waiting for it (the worker's
 * cleanup, after its loop has ended: a shutdown that gave up).
 */
void worker_blkif_free(struct worker *w);

/*
 * Call fn(arg, state, why) each time the ring leaves "connected": when
 * the guest breaks it (state "broken", why the export's reason) and when
 * it is taken down (state "none": blkif-disconnect or the shutdown).
 * From the loop, maybe inside the export's callback: fn must only queue
 * work.  One listener (the ctl's blkif-watch); fn NULL forgets it.
 */
void worker_blkif_set_notify(struct worker *w, worker_blkif_notify_fn *fn,
			     void *arg);

/*
 * blkif-watch's one event line (docs/control-protocol.txt), for worker
 * name: {"event":"blkif","blkif":STATE,"error":"NAME: WHY"} and "\n".
 * Pure: the ctl writes it, the unit test checks it.
 */
void worker_blkif_event_json(struct json_writer *j, const char *name,
			     const char *state, const char *why);

/* "none", "connected", "broken" (the guest broke the ring's rules) or
 * "disconnecting": info's blkif. */
const char *worker_blkif_state(const struct worker *w);

/* A broken ring's reason, as its event says it; "" if not broken. */
const char *worker_blkif_broken_why(const struct worker *w);

/* stats' "blkif" member: the export's counters, or null. */
void worker_blkif_stats_json(const struct worker *w, struct json_writer *j);

#endif /* BLKSTACK_WORKER_BLKIF_H */
