/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-fuse's FUSE side: one regular file MOUNT/nbd (inode 2) in a
 * read-only root directory, the export as a file.  libfuse3's low-level
 * API on a non-blocking /dev/fuse descriptor watched by the caller's
 * bks_loop: every request is answered later, from the NBD client's
 * completion, so many are in flight at once.
 *
 *   read             NBD_CMD_READ (clamped to the export's size)
 *   write            NBD_CMD_WRITE (beyond the end: ENOSPC)
 *   fsync, flush     NBD_CMD_FLUSH if the export takes flushes
 *   fallocate        PUNCH_HOLE|KEEP_SIZE: NBD_CMD_WRITE_ZEROES (holes
 *                    allowed: a punched range must read back as zeroes,
 *                    which TRIM does not promise); ZERO_RANGE: the same
 *                    with NBD_CMD_FLAG_NO_HOLE; mode 0 inside the file:
 *                    nothing to do; split at 1 GiB per NBD request
 *   open             direct_io (no page cache: every loop request is one
 *                    NBD request); a write open of a read-only export is
 *                    EROFS
 *
 * Mount options: max_read and max_write 1 MiB (the kernel's limit for
 * FUSE_MAX_PAGES), async DIO, max_background 64.
 */
#ifndef BLKSTACK_FUSE_SERVE_H
#define BLKSTACK_FUSE_SERVE_H

#include <stdbool.h>

#include "blkstack/error.h"
#include "blkstack/loop.h"
#include "fuse-log.h"
#include "fuse-nbd.h"

struct bf_fuse;

/*
 * Mount a FUSE file system on mnt (an existing empty directory) serving
 * the export ex through nbd, read-only if ro (or if the export is), and
 * watch /dev/fuse on loop.  Called once by main, after bf_nbd_connect().
 * Returns 0 or -errno with err set (nothing mounted then).
 */
int bf_fuse_mount(struct bf_fuse **out, struct bks_loop *loop,
		  struct bf_nbd *nbd, const struct bf_nbd_export *ex,
		  const char *mnt, bool ro, struct bf_log *log,
		  struct bks_error *err);

/*
 * Has the session ended (the file system was unmounted: /dev/fuse said
 * ENODEV, or a fatal error)?  main stops its loop then.
 */
bool bf_fuse_ended(const struct bf_fuse *f);

/*
 * Detach the mount lazily (umount2 MNT_DETACH), keeping /dev/fuse open
 * so that requests in flight are still answered; the session ends when
 * the last user of the file lets go.  For SIGTERM.  Returns 0 or -errno
 * with err set.
 */
int bf_fuse_detach(struct bf_fuse *f, struct bks_error *err);

/*
 * Stop watching, unmount if still mounted, close /dev/fuse (the kernel
 * fails whatever is still pending) and free (NULL: nothing).  Every NBD
 * request must be done first (bf_nbd_fail_all).
 */
void bf_fuse_free(struct bf_fuse *f);

#endif /* BLKSTACK_FUSE_SERVE_H */
