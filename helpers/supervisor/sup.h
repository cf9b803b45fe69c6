/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-supervisor: the state of one supervisor, kept by
 * blkstack-supervisor.c (start-up, signals, files) and sup-run.c (the
 * worker's life: spawn, readiness, exit, restart, hang watch, stop).
 *
 *   (first start) --ok--> running --crash--> restarting --ok--> running
 *   restarting --(restart-limit crashes in restart-window)--> gave-up: exit 1
 *   any --SIGTERM--> stopping --(worker exited)--> exit 0
 *   running --worker said "stopping", exited--> exit (files removed)
 */
#ifndef BLKSTACK_SUP_H
#define BLKSTACK_SUP_H

#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/types.h>

#include "blkstack/loop.h"
#include "blkstack/syslog-client.h"
#include "sup-hang.h"
#include "sup-policy.h"
#include "sup-state.h"

/* How long a stopping worker may take before it is SIGKILLed. */
#define SUP_STOP_TIMEOUT_MS 20000
/* A stopping worker that sends nothing for this long is SIGKILLed. */
#define SUP_STOP_SILENT_MS 3000
/* The hang watch's tick. */
#define SUP_TICK_NS 500000000ull

enum sup_phase {
	SUP_RUNNING,
	SUP_RESTARTING,
	SUP_GAVE_UP,
	SUP_STOPPING,
};

struct sup {
	/* Configuration, fixed after start-up. */
	const char *name, *chain, *rundir, *worker_exe, *xs_error_path;
	bool read_only;
	bool fuse;	    /* --fuse: passed on to every worker it starts */
	char *const *extra; /* worker arguments after "--" */
	int nextra;
	char wdir[PATH_MAX];
	char nbd_sock[PATH_MAX];
	struct sup_policy pol;
	struct bks_syslog *syslog;
	struct bks_loop *loop;

	/* The current worker; pid 0: none. */
	pid_t pid;
	int pidfd, chan_fd, ready_fd;
	struct bks_watch pid_watch, chan_watch, ready_watch;
	char ready_buf[1024];
	size_t ready_len;
	bool ready;			  /* it said "ok" */
	bool said_stopping;		  /* it said "stopping" */
	char kill_reason[SUP_REASON_MAX]; /* we killed it: why */
	uint64_t started_ns, last_msg_ns;
	struct sup_beat beat;
	bool have_beat;
	/*
	 * A duplicate of the worker's /dev/fuse descriptor ("fuse-fd"), or
	 * -1: kept across the worker's restarts, so that its FUSE file
	 * system outlives a crash; given to the next worker (--fuse-fd);
	 * closed when the worker says "stopping" and at exit.
	 */
	int fuse_fd;

	/* Supervision. */
	enum sup_phase phase;
	struct sup_crashes crashes;
	struct sup_status st;
	struct bks_timer restart_timer, tick_timer, ready_timer, stop_timer;
	uint64_t stop_deadline_ns;
	int exit_code;
};

/* Log "worker NAME: MSG" to syslog (stderr without it). */
void sup_log(struct sup *s, int prio, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Write supervisor.state from s->st (a failure is logged). */
void sup_save(struct sup *s);

/*
 * Spawn the worker with a readiness pipe and the channel (sup-run.c).
 * Returns 0 with s->pid, s->pidfd, s->chan_fd, s->ready_fd set, or
 * -errno with err set.
 */
int sup_spawn(struct sup *s, struct bks_error *err);

/*
 * Watch the worker spawned (its exit, its channel, and unless
 * first_ready, its readiness), and start the tick of the hang watch.
 * Returns 0 or -errno with err set.
 */
int sup_watch(struct sup *s, bool first_ready, struct bks_error *err);

/* Prepare the timers of sup-run.c (once, after s->loop). */
void sup_timers_init(struct sup *s);

/* SIGTERM: stop restarting, stop the worker (bounded), then exit. */
void sup_stop(struct sup *s);

/* Close what is left of the current worker (it was reaped). */
void sup_forget_worker(struct sup *s);

#endif /* BLKSTACK_SUP_H */
