/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The run directory (docs/control-protocol.txt, "Run directory"): where
 * the worker, blkstack-ctl and the hotplug helper find each other.
 * DIR is --rundir, else $BLKSTACK_RUNDIR, else DEFAULT_RUNDIR; worker
 * NAME owns DIR/NAME with the files below.
 */
#ifndef BLKSTACK_RUNDIR_H
#define BLKSTACK_RUNDIR_H

#include <stddef.h>

#include "blkstack/error.h"

#define DEFAULT_RUNDIR "/run/blkstack"

/*
 * Longest run directory a program accepts: room is left in PATH_MAX for
 * "/NAME/" and the longest file name below it (a worker name is at most
 * WORKER_NAME_MAX bytes).
 */
#define RUNDIR_MAX 3072

/*
 * The run directory of a program that must have an absolute one (the
 * hotplug helper, blkstack-xenbus): given (its --rundir; NULL if none),
 * else $BLKSTACK_RUNDIR if set and not empty, else DEFAULT_RUNDIR, into
 * buf (size bytes), trailing '/' dropped.  The value is untrusted: a
 * relative path, a control character or more than RUNDIR_MAX bytes is
 * refused.  Returns 0, or -EINVAL / -ENAMETOOLONG with err naming where
 * the value came from.
 */
int rundir_choose(const char *given, char *buf, size_t size,
		  struct bks_error *err);

/*
 * State kept across a restart of the worker (docs/control-protocol.txt,
 * "State kept across a restart"): "paused" while a pause holds, and the
 * layers' state files (BKS_LAYER_STATE_FMT in blkstack/chain.h, one per
 * position up to BKS_CHAIN_MAX_LAYERS: the log: dirty bitmaps).
 */
#define WORKER_FILE_PAUSED "paused"
#define WORKER_FILES_STATE                                                     \
	WORKER_FILE_PAUSED, "layer0.state", "layer1.state", "layer2.state",    \
	    "layer3.state", "layer4.state", "layer5.state", "layer6.state",    \
	    "layer7.state", "layer8.state", "layer9.state", "layer10.state",   \
	    "layer11.state", "layer12.state", "layer13.state",                 \
	    "layer14.state", "layer15.state"
/* Layer state files named in WORKER_FILES_STATE. */
#define WORKER_LAYER_STATES 16

/* The files of DIR/NAME. */
#define WORKER_FILE_LOCK "lock"
#define WORKER_FILE_PID	 "pid"
#define WORKER_FILE_NBD	 "nbd.sock"
#define WORKER_FILE_CTL	 "ctl.sock"
/*
 * With --fuse: the mount point of the worker's FUSE export, made by the
 * worker; the disk is DIR/NAME/fuse/disk (BKS_FUSE_FILE_NAME).  It stays
 * mounted across a supervised restart; a graceful stop unmounts and
 * removes it, worker_remove_files() whatever a crash left.
 */
#define WORKER_FILE_FUSE "fuse"

/* The supervisor's files of DIR/NAME (docs/control-protocol.txt,
 * "Supervision"). */
#define SUPERVISOR_FILE_LOCK  "supervisor.lock"
#define SUPERVISOR_FILE_PID   "supervisor.pid"
#define SUPERVISOR_FILE_STATE "supervisor.state"

#endif /* BLKSTACK_RUNDIR_H */
