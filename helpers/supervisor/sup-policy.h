/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The supervisor's configuration and restart policy
 * (docs/control-protocol.txt, "Supervision"): the keys of
 * /etc/blkstack.conf (conf.h) it reads once at start, and the
 * bookkeeping of crashes that decides the back-off before a restart and
 * when to give up.  No I/O but conf_read(); the clock is passed in.
 */
#ifndef BLKSTACK_SUP_POLICY_H
#define BLKSTACK_SUP_POLICY_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/error.h"

/* Defaults of the configuration keys. */
#define SUP_RESTART_LIMIT_DEFAULT  5
#define SUP_RESTART_WINDOW_DEFAULT 60
#define SUP_HANG_TIMEOUT_DEFAULT   30
/* Bounds of restart-limit (a crash time is kept for each). */
#define SUP_RESTART_LIMIT_MAX 100
/*
 * Back-off: the first restart at once, then 100 ms doubling to 5 s while
 * the worker keeps crashing; a worker that ran SUP_STABLE_S seconds was
 * healthy, and its crash is restarted at once again.
 */
#define SUP_BACKOFF_FIRST_MS 100u
#define SUP_BACKOFF_MAX_MS   5000u
#define SUP_STABLE_S	     5u

struct sup_policy {
	unsigned int restart_limit;  /* restart-limit: crashes ... */
	unsigned int restart_window; /* restart-window: ... in seconds */
	unsigned int hang_timeout;   /* hang-timeout: seconds, 0: off */
	bool hang_restart;	     /* hang-action = restart */
};

/*
 * Read restart-limit (1..SUP_RESTART_LIMIT_MAX), restart-window
 * (1..86400), hang-timeout (0..86400) and hang-action (report|restart)
 * into *p, defaults for those absent.  Called once by the supervisor at
 * start.  Returns 0, or -errno with err set (-EINVAL naming file:line
 * for a bad value).
 */
int sup_policy_read(struct sup_policy *p, struct bks_error *err);

/* The crashes of one worker. */
struct sup_crashes {
	uint64_t at[SUP_RESTART_LIMIT_MAX]; /* times of recent crashes, ns */
	unsigned int n;			    /* how many of at[] */
	unsigned int next_delay_ms;	    /* back-off for the next restart */
};

/*
 * Count a crash at now_ns of a worker that had run for ran_ns.  Returns
 * true if this is the restart_limit-th crash within restart_window
 * seconds: give up.  Else *delay_ms gets the back-off before the restart
 * (0 for the first, and again after a run of SUP_STABLE_S seconds or more;
 * then 100 ms doubling up to 5 s).
 */
bool sup_crash(struct sup_crashes *c, const struct sup_policy *p,
	       uint64_t now_ns, uint64_t ran_ns, unsigned int *delay_ms);

#endif /* BLKSTACK_SUP_POLICY_H */
