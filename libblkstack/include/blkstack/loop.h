/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The event loop: one epoll instance, file-descriptor watches, timers and
 * deferred calls.  A worker owns exactly one loop and passes it explicitly
 * to everything that needs it; nothing in blkstack keeps a loop in a
 * global.  Nothing run from the loop may block: slow work is split into
 * callbacks, and waiting is done with timers, never with sleep().
 *
 * All registration structures (struct bks_watch, bks_timer, bks_defer) are
 * owned by the caller, usually embedded in its own state, so the loop never
 * allocates after bks_loop_new().  A structure must stay valid until it is
 * unregistered.
 */
#ifndef BLKSTACK_LOOP_H
#define BLKSTACK_LOOP_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/error.h"

struct bks_loop;

/* ---- file descriptors -------------------------------------------------- */

struct bks_watch;

/*
 * Called from bks_loop_run*() when fd is ready; events are EPOLL* bits.
 * The callback may unregister this or any other watch.
 */
typedef void bks_watch_fn(struct bks_watch *w, uint32_t events);

struct bks_watch {
	int fd;
	bks_watch_fn *fn;
	void *opaque; /* for the callback's owner */
	/* private */
	struct bks_loop *loop;
	bool active;
};

/*
 * Watch fd for events (EPOLLIN, EPOLLOUT, ...; level-triggered).
 * Returns 0 or -errno (-EEXIST if w is already active).
 */
int bks_watch_add(struct bks_loop *loop, struct bks_watch *w, int fd,
		  uint32_t events, bks_watch_fn *fn, void *opaque);

/* Change the events of an active watch.  Returns 0 or -errno. */
int bks_watch_mod(struct bks_watch *w, uint32_t events);

/* Stop watching; harmless on an inactive watch.  Does not close the fd. */
void bks_watch_del(struct bks_watch *w);

/* ---- timers -------------------------------------------------------------- */

struct bks_timer;

/* Called once per bks_timer_arm(), when the delay has passed. */
typedef void bks_timer_fn(struct bks_timer *t);

struct bks_timer {
	bks_timer_fn *fn;
	void *opaque;
	/* private */
	struct bks_loop *loop;
	uint64_t deadline_ns; /* CLOCK_MONOTONIC */
	struct bks_timer *next;
	bool armed;
};

/* Prepare t; it is not armed.  Never fails. */
void bks_timer_init(struct bks_loop *loop, struct bks_timer *t,
		    bks_timer_fn *fn, void *opaque);

/* Fire t once, delay_ns from now; re-arming an armed timer moves it. */
void bks_timer_arm(struct bks_timer *t, uint64_t delay_ns);

/* Disarm t; harmless if it is not armed. */
void bks_timer_cancel(struct bks_timer *t);

/* ---- deferred calls ------------------------------------------------------ */

struct bks_defer;

/*
 * Called once per bks_defer_schedule(), after the current batch of
 * events, before the loop waits again.  This is where a queue submits
 * what the callbacks of the batch queued (and merges it).
 */
typedef void bks_defer_fn(struct bks_defer *d);

struct bks_defer {
	bks_defer_fn *fn;
	void *opaque;
	/* private */
	struct bks_loop *loop;
	struct bks_defer *next;
	bool scheduled;
};

void bks_defer_init(struct bks_loop *loop, struct bks_defer *d,
		    bks_defer_fn *fn, void *opaque);

/* Schedule d; scheduling a scheduled call is a no-op. */
void bks_defer_schedule(struct bks_defer *d);

/* Unschedule d; harmless if not scheduled. */
void bks_defer_cancel(struct bks_defer *d);

/* ---- the loop ------------------------------------------------------------ */

/* Create a loop.  Returns 0 or -errno with err set. */
int bks_loop_new(struct bks_loop **out, struct bks_error *err);

/* Free a loop.  Every watch must have been removed first. */
void bks_loop_free(struct bks_loop *loop);

/*
 * Run one iteration: deferred calls, then wait up to timeout_ms (-1: until
 * something happens; the nearest timer shortens the wait) and dispatch
 * ready watches and due timers, then deferred calls again.
 * Returns the number of callbacks run, or -errno (EINTR is not an error:
 * it returns 0).
 */
int bks_loop_run_once(struct bks_loop *loop, int timeout_ms);

/* Run until bks_loop_stop().  Returns 0 or -errno. */
int bks_loop_run(struct bks_loop *loop);

/* Make bks_loop_run() return after the current iteration. */
void bks_loop_stop(struct bks_loop *loop);

/* CLOCK_MONOTONIC now, in nanoseconds. */
uint64_t bks_now_ns(void);

#endif /* BLKSTACK_LOOP_H */
