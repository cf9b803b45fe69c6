/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The FUSE server of the loop mechanism, blkstack-fuse (helpers/fuse/):
 * start it on a new mountpoint, recognise it later from another process,
 * stop it.  Internal to the dev-*.c files.
 */
#ifndef BLKSTACK_DEV_FUSE_H
#define BLKSTACK_DEV_FUSE_H

#include <stdbool.h>
#include <stddef.h>

#include "blkstack/error.h"
#include "hp-dev.h"

/*
 * blkstack-fuse for nbd_sock on a new STATE_DIR/fuse-XXXXXX, filling the fuse
 * fields of dev (mech already set) and file (the export as a file,
 * FUSE_DIR/nbd).  On failure, undoes what it did and leaves dev's fuse
 * fields empty.
 */
int hp_fuse_setup(const char *nbd_sock, const char *state_dir, bool ro,
		  struct hp_dev *dev, char *file, size_t size,
		  struct bks_error *err);

/*
 * Is the blkstack-fuse the record names (fuse_pid, fuse_dir) still
 * running and still ours (our blkstack-fuse executable, --mount fuse_dir)?  If
 * so *ours is true and *pidfd refers to it (the caller closes it), so that a
 * recycled pid can never be signalled; else *ours is false and *pidfd -1.
 * Returns 0, or -errno from pidfd_open (then not ours).
 */
int hp_fuse_check(const struct hp_dev *dev, int *pidfd, bool *ours);

/*
 * Tell the blkstack-fuse of pidfd (ours, from hp_fuse_check()) that a
 * detach is coming (SIGUSR1): from then on no request waits more than 5 s
 * for the worker, so that the loop device's flush cannot hang on a dead
 * or hung worker.  The next open of its file ends that.  Best effort.
 */
void hp_fuse_hurry(int pidfd);

/*
 * Stop the blkstack-fuse of dev->fuse_dir once its loop device is gone: lazy
 * unmount, wait for it to exit (then SIGTERM, then SIGKILL) if ours
 * (pidfd and ours from hp_fuse_check()), remove the mountpoint and its
 * log.  Whatever is already gone is success.
 */
int hp_fuse_stop(const struct hp_dev *dev, int pidfd, bool ours,
		 struct bks_error *err);

#endif /* BLKSTACK_DEV_FUSE_H */
