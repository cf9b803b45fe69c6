/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * DIR/NAME/supervisor.state (docs/control-protocol.txt, "Supervision"):
 * what `blkstack-ctl list` shows of a supervised worker, written whole
 * (a temporary file renamed over it) on every change.  Lines
 * "key=value", values one line each (sanitized):
 *
 *   state=running|restarting|gave-up|stopping
 *   pid=SUPERVISOR_PID
 *   worker_pid=PID          0 while there is none
 *   restarts=N              successful restarts so far
 *   last_exit=REASON        "killed by signal 9 (Killed)", "hung: ...", or
 * empty hung=REASON             while the worker is hung, else empty
 *   reconnect=RESULT        what rebinding the devices did after the last
 *                           restart (or on give-up), or empty
 *   gave_up=REASON          once given up, else empty
 */
#ifndef BLKSTACK_SUP_STATE_H
#define BLKSTACK_SUP_STATE_H

#include <sys/types.h>

#include "blkstack/error.h"

#define SUP_REASON_MAX 256

struct sup_status {
	const char *state;
	pid_t pid, worker_pid;
	unsigned int restarts;
	char last_exit[SUP_REASON_MAX];
	char hung[SUP_REASON_MAX];
	char reconnect[SUP_REASON_MAX];
	char gave_up[SUP_REASON_MAX];
};

/*
 * Write st to wdir/supervisor.state (via supervisor.state.tmp).  Called
 * by the supervisor, which holds supervisor.lock.  Returns 0 or -errno
 * with err set.
 */
int sup_state_write(const char *wdir, const struct sup_status *st,
		    struct bks_error *err);

#endif /* BLKSTACK_SUP_STATE_H */
