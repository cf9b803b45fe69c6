/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The event loop: see include/blkstack/loop.h. */
#include <errno.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/loop.h"

/* Events taken from the kernel per epoll_wait(). */
#define LOOP_BATCH 64

struct bks_loop {
	int epfd;
	bool stop;
	/*
	 * The batch being dispatched.  bks_watch_del() clears its entries
	 * here, so that a watch removed (and freed) by an earlier callback
	 * of the same batch is never called.
	 */
	struct epoll_event batch[LOOP_BATCH];
	int batch_n;
	struct bks_timer *timers; /* armed, sorted by deadline */
	struct bks_defer *defer_head, *defer_tail;
};

uint64_t bks_now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

int bks_loop_new(struct bks_loop **out, struct bks_error *err)
{
	struct bks_loop *loop = NULL;
	int rc = 0;

	*out = NULL;
	loop = calloc(1, sizeof(*loop));
	if (!loop) {
		rc = bks_error_set(err, ENOMEM, "allocate event loop");
		goto out;
	}
	loop->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (loop->epfd < 0) {
		rc = bks_error_set(err, errno, "epoll_create1");
		goto out;
	}
	*out = loop;
	loop = NULL;
out:
	free(loop);
	return rc;
}

void bks_loop_free(struct bks_loop *loop)
{
	if (!loop)
		return;
	close(loop->epfd);
	free(loop);
}

/* ---- watches ------------------------------------------------------------- */

int bks_watch_add(struct bks_loop *loop, struct bks_watch *w, int fd,
		  uint32_t events, bks_watch_fn *fn, void *opaque)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};

	if (w->active)
		return -EEXIST;
	w->fd = fd;
	w->fn = fn;
	w->opaque = opaque;
	w->loop = loop;
	if (epoll_ctl(loop->epfd, EPOLL_CTL_ADD, fd, &ev) < 0)
		return -errno;
	w->active = true;
	return 0;
}

int bks_watch_mod(struct bks_watch *w, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = w};

	if (!w->active)
		return -EINVAL;
	if (epoll_ctl(w->loop->epfd, EPOLL_CTL_MOD, w->fd, &ev) < 0)
		return -errno;
	return 0;
}

void bks_watch_del(struct bks_watch *w)
{
	struct bks_loop *loop = w->loop;

	if (!w->active)
		return;
	epoll_ctl(loop->epfd, EPOLL_CTL_DEL, w->fd, NULL);
	w->active = false;
	for (int i = 0; i < loop->batch_n; i++) {
		if (loop->batch[i].data.ptr == w)
			loop->batch[i].data.ptr = NULL;
	}
}

/* ---- timers -------------------------------------------------------------- */

void bks_timer_init(struct bks_loop *loop, struct bks_timer *t,
		    bks_timer_fn *fn, void *opaque)
{
	t->fn = fn;
	t->opaque = opaque;
	t->loop = loop;
	t->deadline_ns = 0;
	t->next = NULL;
	t->armed = false;
}

void bks_timer_cancel(struct bks_timer *t)
{
	struct bks_timer **pp;

	if (!t->armed)
		return;
	for (pp = &t->loop->timers; *pp; pp = &(*pp)->next) {
		if (*pp == t) {
			*pp = t->next;
			break;
		}
	}
	t->next = NULL;
	t->armed = false;
}

void bks_timer_arm(struct bks_timer *t, uint64_t delay_ns)
{
	struct bks_timer **pp;

	bks_timer_cancel(t);
	t->deadline_ns = bks_now_ns() + delay_ns;
	/* Keep the list sorted; equal deadlines fire in arming order. */
	for (pp = &t->loop->timers; *pp; pp = &(*pp)->next) {
		if ((*pp)->deadline_ns > t->deadline_ns)
			break;
	}
	t->next = *pp;
	*pp = t;
	t->armed = true;
}

/* Fire the timers that are due.  Returns how many fired. */
static int run_timers(struct bks_loop *loop)
{
	uint64_t now = bks_now_ns();
	int n = 0;

	while (loop->timers && loop->timers->deadline_ns <= now) {
		struct bks_timer *t = loop->timers;

		loop->timers = t->next;
		t->next = NULL;
		t->armed = false;
		t->fn(t);
		n++;
	}
	return n;
}

/* The epoll timeout that honours both timeout_ms and the next timer. */
static int wait_ms(const struct bks_loop *loop, int timeout_ms)
{
	uint64_t now, left_ms;

	/*
	 * Do not wait when a deferred call is due, nor when one of the calls
	 * run before the wait asked bks_loop_run() to stop: nothing might
	 * ever wake us.
	 */
	if (loop->defer_head || loop->stop)
		return 0;
	if (!loop->timers)
		return timeout_ms;
	now = bks_now_ns();
	if (loop->timers->deadline_ns <= now)
		return 0;
	/* Round up, so that a timer is not woken for 1 ms early. */
	left_ms = (loop->timers->deadline_ns - now + 999999) / 1000000;
	if (left_ms > 3600 * 1000)
		left_ms = 3600 * 1000;
	if (timeout_ms < 0 || (uint64_t)timeout_ms > left_ms)
		return (int)left_ms;
	return timeout_ms;
}

/* ---- deferred calls ------------------------------------------------------ */

void bks_defer_init(struct bks_loop *loop, struct bks_defer *d,
		    bks_defer_fn *fn, void *opaque)
{
	d->fn = fn;
	d->opaque = opaque;
	d->loop = loop;
	d->next = NULL;
	d->scheduled = false;
}

void bks_defer_schedule(struct bks_defer *d)
{
	struct bks_loop *loop = d->loop;

	if (d->scheduled)
		return;
	d->next = NULL;
	if (loop->defer_tail)
		loop->defer_tail->next = d;
	else
		loop->defer_head = d;
	loop->defer_tail = d;
	d->scheduled = true;
}

void bks_defer_cancel(struct bks_defer *d)
{
	struct bks_loop *loop = d->loop;
	struct bks_defer *prev = NULL;

	if (!d->scheduled)
		return;
	for (struct bks_defer *i = loop->defer_head; i; prev = i, i = i->next) {
		if (i != d)
			continue;
		if (prev)
			prev->next = d->next;
		else
			loop->defer_head = d->next;
		if (loop->defer_tail == d)
			loop->defer_tail = prev;
		break;
	}
	d->next = NULL;
	d->scheduled = false;
}

/*
 * Run the deferred calls scheduled so far.  Calls scheduled while they
 * run wait for the next round, so that a call rescheduling itself cannot
 * starve the loop.
 */
static int run_defers(struct bks_loop *loop)
{
	struct bks_defer *d = loop->defer_head;
	int n = 0;

	loop->defer_head = loop->defer_tail = NULL;
	while (d) {
		struct bks_defer *next = d->next;

		d->next = NULL;
		d->scheduled = false;
		d->fn(d);
		n++;
		d = next;
	}
	return n;
}

/* ---- running ------------------------------------------------------------- */

int bks_loop_run_once(struct bks_loop *loop, int timeout_ms)
{
	int n, ran;

	ran = run_defers(loop);
	n = epoll_wait(loop->epfd, loop->batch, LOOP_BATCH,
		       wait_ms(loop, timeout_ms));
	if (n < 0) {
		if (errno == EINTR)
			return ran;
		return -errno;
	}
	loop->batch_n = n;
	for (int i = 0; i < n; i++) {
		struct bks_watch *w = loop->batch[i].data.ptr;

		/* NULL: removed by an earlier callback of this batch. */
		if (!w)
			continue;
		w->fn(w, loop->batch[i].events);
		ran++;
	}
	loop->batch_n = 0;
	ran += run_timers(loop);
	ran += run_defers(loop);
	return ran;
}

int bks_loop_run(struct bks_loop *loop)
{
	int rc;

	loop->stop = false;
	while (!loop->stop) {
		rc = bks_loop_run_once(loop, -1);
		if (rc < 0)
			return rc;
	}
	return 0;
}

void bks_loop_stop(struct bks_loop *loop)
{
	loop->stop = true;
}
