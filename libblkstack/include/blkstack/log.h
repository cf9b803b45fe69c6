/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The log: filter -- a dirty-block log.
 *
 *   log:[block=SIZE]      e.g. "log:|aio:/images/vm.img", "log:block=4K|..."
 *
 * log: passes every request down unchanged and remembers, in a bitmap of
 * blocks of SIZE bytes (default 64K; a power of two from 4K to 64M), every
 * block that a write, write_zeroes or discard touched.  Reads and flushes
 * leave it alone.  A consumer (e.g. a copy for live migration or an
 * incremental backup, through the control socket) reads the dirty extents,
 * clears what it is about to copy, and copies it.
 *
 * The log is conservative: a block is marked when the request enters the
 * layer, before it is passed down, so a request that fails or transfers
 * only part of its range still leaves its blocks dirty; and it is marked
 * again when the request completes, so that a clear done while the
 * request was in flight cannot lose it.  A dirty block may hold unchanged
 * data; a changed block is never clean.
 *
 * The functions below take the log: layer (bks_chain_find(chain, "log"))
 * and return -EINVAL for any other layer.  They must be called from the
 * thread that runs the chain's loop.
 */
#ifndef BLKSTACK_LOG_H
#define BLKSTACK_LOG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkstack/driver.h"

/* Default, smallest and largest block of the log. */
#define BKS_LOG_BLOCK_DEFAULT (64u * 1024)
#define BKS_LOG_BLOCK_MIN     (4u * 1024)
#define BKS_LOG_BLOCK_MAX     (64u * 1024 * 1024)

/*
 * Fill out[0..max) with the dirty extents at or after byte start, in
 * order: maximal runs of dirty blocks, in bytes, clipped to start and to
 * the layer's size.  *n is set to the number filled; *n < max means there
 * are no more.  To walk the whole log, start at 0 and continue from the
 * end of the last extent returned until *n is 0.  Returns 0, or -EINVAL
 * (not a log: layer, start beyond the size).
 */
int bks_log_dirty(struct bks_layer *log, uint64_t start, struct bks_extent *out,
		  size_t max, size_t *n);

/*
 * Mark clean every block lying wholly inside [offset, offset + len); the
 * range is clipped to the layer's size, and a range reaching the end
 * covers the last (possibly partial) block.  Partially covered blocks stay
 * dirty (conservative).  bks_log_clear(log, 0, UINT64_MAX) clears it all.
 * Returns 0, or -EINVAL (not a log: layer, offset beyond the size).
 */
int bks_log_clear(struct bks_layer *log, uint64_t offset, uint64_t len);

/* The block size in bytes, or -EINVAL. */
int64_t bks_log_block_size(struct bks_layer *log);

/* Bytes in dirty blocks (clipped to the layer's size), or -EINVAL. */
int64_t bks_log_dirty_bytes(struct bks_layer *log);

/* ---- the mark: incremental backups across a snapshot ----------------------
 *
 * docs/chains.txt ("Incremental backups with log:") has the workflow.
 */

/*
 * Freeze the dirty set as it is now (a snapshot was taken: these blocks
 * are what changed in the old top since the last backup).  From then on,
 * bks_log_dirty() lists frozen | written-since, and bks_log_clear_frozen()
 * clears only the frozen set (the blocks written since the mark stay
 * dirty: they are not in the old top).  A second mark before a clear adds
 * the current set to the frozen one.  bks_log_clear() clears a range in
 * both sets.  Persisted in the layer's state file (version 2 of its
 * header; a version 1 file is refused with a message saying so), so that
 * it survives a worker restart.  Returns 0, or -EINVAL (not a log:
 * layer).
 */
int bks_log_mark(struct bks_layer *log);

/*
 * The frozen set's extents, as bks_log_dirty() lists the dirty ones.
 * Returns 0, -ENOENT if there is no mark, -EINVAL as bks_log_dirty().
 */
int bks_log_frozen(struct bks_layer *log, uint64_t start,
		   struct bks_extent *out, size_t max, size_t *n);

/*
 * Clear the frozen set and drop the mark.  Returns 0, -ENOENT if there is
 * no mark, -EINVAL (not a log: layer).
 */
int bks_log_clear_frozen(struct bks_layer *log);

/* True if the layer is a log: layer with a mark. */
bool bks_log_marked(struct bks_layer *log);

/* Bytes in frozen blocks (0 without a mark), or -EINVAL. */
int64_t bks_log_frozen_bytes(struct bks_layer *log);

#endif /* BLKSTACK_LOG_H */
