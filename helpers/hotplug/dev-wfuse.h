/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The fuse mechanism's file: the worker's own FUSE export
 * (blkstack-worker --fuse), the file STATE_DIR/fuse/disk of a FUSE file
 * system the worker mounted on STATE_DIR/fuse (WORKER_FILE_FUSE), where
 * STATE_DIR is the worker's directory.  A loop device on it (dev-loop.h)
 * is the dom0 device.  Internal to the dev-*.c files.
 */
#ifndef BLKSTACK_DEV_WFUSE_H
#define BLKSTACK_DEV_WFUSE_H

#include <stdbool.h>
#include <stddef.h>

#include "blkstack/error.h"

/*
 * How long a loop device's flush on the worker's file may take at detach
 * before the worker is taken for hung and the file system's connection
 * is aborted (hp_wfuse_abort()); as long again for the flush to end.
 */
#define HP_WFUSE_FLUSH_MS 10000

/*
 * STATE_DIR/fuse into dir and STATE_DIR/fuse/disk into file (either may
 * be NULL).  Returns 0 or -ENAMETOOLONG with err set.
 */
int hp_wfuse_paths(const char *state_dir, char *dir, size_t dsize, char *file,
		   size_t fsize, struct bks_error *err);

/*
 * Is the worker's FUSE file system mounted on dir (STATE_DIR/fuse)?  From
 * the kernel's mount table, never a stat: a session whose worker died (a
 * supervisor keeps it for the next) would make a stat wait.
 */
bool hp_wfuse_served(const char *dir);

/*
 * struct hp_loop_bound's stuck(): abort the FUSE connection behind the
 * loop device open as fd (its backing file's device, LOOP_GET_STATUS64;
 * /sys/fs/fuse/connections/N/abort, mounting fusectl there if nothing
 * is), so that every request on it fails at once.  The worker's file
 * is dead after that, for every device on it.  Best effort: what fails
 * is said on stderr.
 */
void hp_wfuse_abort(int fd, void *arg);

#endif /* BLKSTACK_DEV_WFUSE_H */
