/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * What a worker keeps in DIR/NAME so that a worker restarted after a
 * crash (kill -9, a supervisor's restart) carries on where the dead one
 * was (docs/control-protocol.txt, "State kept across a restart"): the
 * pause (the file "paused") and the layers' state files (layerN.state,
 * the chain framework's: the log: dirty bitmaps).  Called by
 * blkstack-worker.c from the loop; each is a single syscall or a few on
 * tmpfs, never a wait.
 */
#ifndef BLKSTACK_WORKER_STATE_H
#define BLKSTACK_WORKER_STATE_H

#include <stdbool.h>

#include "blkstack/error.h"
#include "worker.h"

/*
 * Record that w is paused: DIR/NAME/paused exists when this returns 0
 * (created whole: an empty file, mode 0600).  Called when a pause
 * completes, before it is acknowledged.  Returns 0 or -errno with err.
 */
int worker_state_pause_save(const struct worker *w, struct bks_error *err);

/*
 * Forget the pause: DIR/NAME/paused is gone when this returns 0 (also
 * when it was not there).  Called by unpause before requests go on.
 * Returns 0 or -errno with err.
 */
int worker_state_pause_clear(const struct worker *w, struct bks_error *err);

/*
 * True if DIR/NAME/paused is there: the worker starting now replaces a
 * paused one that died, and must come up paused.  An error reading it
 * (other than its absence) counts as paused: holding requests is the
 * safe side; *err then says why (else it is left alone).
 */
bool worker_state_pause_saved(const struct worker *w, struct bks_error *err);

/*
 * The chain file DIR/NAME/chain: the chain string served now, when it is
 * not --chain any more (snapshot, reopen, commit changed it).  Written
 * whole: DIR/NAME/chain.tmp, then renamed over it, so that a worker
 * restarted after a crash finds the old string or the new one, never a
 * part.  One line, the string and "\n".  Returns 0 or -errno with err.
 */
int worker_state_chain_save(const struct worker *w, const char *chain,
			    struct bks_error *err);

/*
 * Read DIR/NAME/chain into buf (size bytes, NUL-terminated, without the
 * newline).  Returns 1 if it was there, 0 if not, or -errno with err
 * (unreadable, too long, not one line).
 */
int worker_state_chain_load(const struct worker *w, char *buf, size_t size,
			    struct bks_error *err);

/*
 * Remove every state file of w (paused, chain, layerN.state): the disk's life
 * ends (a graceful shutdown).  Best effort; returns 0 or the first
 * -errno other than -ENOENT, with err.
 */
int worker_state_remove(const struct worker *w, struct bks_error *err);

#endif /* BLKSTACK_WORKER_STATE_H */
