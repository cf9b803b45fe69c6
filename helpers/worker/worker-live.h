/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's live chain changes (worker-live.c): snapshot (a new
 * overlay on top of the running image) and reopen (the image swap),
 * each inside a short hold of the NBD export (docs/control-protocol.txt,
 * "snapshot", "reopen").  One at a time, and not while a job (commit,
 * stream: worker-job.h) runs.  Everything is on the worker's loop; the
 * only blocking steps are the ones the API allows: creating the overlay
 * (before the hold) and opening images and reopening them inside the
 * drain.
 */
#ifndef BLKSTACK_WORKER_LIVE_H
#define BLKSTACK_WORKER_LIVE_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/error.h"
#include "worker.h"

/* What a finished operation hands its caller. */
struct worker_live_result {
	uint64_t held_ns;  /* the guest's I/O was held this long */
	const char *chain; /* the chain string now served */
};

/*
 * The end of an operation, from the loop: rc 0 with res, or -errno with
 * err saying which step failed (the chain then serves as before).
 */
typedef void worker_live_fn(void *arg, int rc,
			    const struct worker_live_result *res,
			    const struct bks_error *err);

/* Allocate w->live.  Returns 0 or -ENOMEM with err. */
int worker_live_new(struct worker *w, struct bks_error *err);
/* Free w->live (after the loop has stopped). */
void worker_live_free(struct worker *w);

/* True while an operation is under way. */
bool worker_live_busy(const struct worker *w);

/*
 * Snapshot: create overlay (an absolute path that must not exist) as a
 * format image ("qcow2", "vhd", or NULL: the sink's format if it is one of
 * these, else qcow2) backed by the sink, then in a hold: flush, open it,
 * make the old sink read-only, record DIR/NAME/chain, put the overlay on
 * top, mark the log: layers.  Returns 0 (done(arg, ...) follows from the
 * loop) or -errno with err and no callback: -EINVAL (bad argument),
 * -EEXIST, -EROFS (a read-only worker), -EBUSY (another operation or a
 * job), -ESHUTDOWN, or the creation's error.
 */
int worker_live_snapshot(struct worker *w, const char *overlay,
			 const char *format, worker_live_fn *done, void *arg,
			 struct bks_error *err);

/*
 * Reopen (the image swap): in a hold, flush, open chain beside the
 * running one (same mode, state directory and metadata cache), swap them
 * (same size and block size), record DIR/NAME/chain, close the old one.
 * Returns 0 (done follows) or -errno with err and no callback, as
 * worker_live_snapshot().
 */
int worker_live_reopen(struct worker *w, const char *chain,
		       worker_live_fn *done, void *arg, struct bks_error *err);

/*
 * The worker is stopping (called before the export's holds end): an
 * operation waiting for its drain or flush ends with -ESHUTDOWN, and
 * changes nothing.
 */
void worker_live_stop(struct worker *w);

/* Forget the callback of the operation under way (its caller is gone). */
void worker_live_forget(struct worker *w, void *arg);

#endif /* BLKSTACK_WORKER_LIVE_H */
