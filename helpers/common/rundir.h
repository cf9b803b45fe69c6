/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The run directory (docs/control-protocol.txt, "Run directory"): where
 * the worker, blkstack-ctl and the hotplug helper find each other.
 * DIR is --rundir, else $BLKSTACK_RUNDIR, else DEFAULT_RUNDIR; worker
 * NAME owns DIR/NAME with the files below.
 */
#ifndef BLKSTACK_RUNDIR_H
#define BLKSTACK_RUNDIR_H

#define DEFAULT_RUNDIR "/run/blkstack"

/* The files of DIR/NAME. */
#define WORKER_FILE_LOCK "lock"
#define WORKER_FILE_PID	 "pid"
#define WORKER_FILE_NBD	 "nbd.sock"
#define WORKER_FILE_CTL	 "ctl.sock"

/* The supervisor's files of DIR/NAME (docs/control-protocol.txt,
 * "Supervision"). */
#define SUPERVISOR_FILE_LOCK  "supervisor.lock"
#define SUPERVISOR_FILE_PID   "supervisor.pid"
#define SUPERVISOR_FILE_STATE "supervisor.state"

#endif /* BLKSTACK_RUNDIR_H */
