/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Inside the file queue (include/blkstack/aioq.h): the state aioq.c (the
 * engine-independent part) shares with its two engines, aioq-libaio.c and
 * aioq-uring.c, and the ops table each engine fills.
 *
 * aioq.c owns the requests, slots, merging, the pending list, stats and
 * the busy/free discipline.  An engine only turns a batch of prepared
 * slots into kernel submissions and turns kernel completions back into
 * aioq_slot_done() calls.
 */
#ifndef BLKSTACK_AIOQ_INTERNAL_H
#define BLKSTACK_AIOQ_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "blkstack/aioq.h"

/* A kernel submission: one request, or several merged adjacent ones. */
struct aioq_slot {
	unsigned int idx; /* in q->slots: an engine's per-slot arrays */
	/* BKS_AIOQ_MAX_IOV entries; only used once a second request joins
	 * (a slot with one request uses that request's own iovecs, which
	 * may be more than BKS_AIOQ_MAX_IOV of them). */
	struct iovec *iov;
	bool merged_iov; /* iov holds the vector */
	int iovcnt;
	int fd;
	enum bks_op op;
	bool dsync; /* a write with RWF_DSYNC (FUA) */
	uint64_t offset, bytes;
	struct bks_req *head, *tail; /* requests covered, in offset order */
	struct aioq_slot *next_free;
	struct bks_offload_job job; /* a flush's fdatasync() fallback */
	struct bks_aioq *q;
};

/* The vector of slot s: its own, or its single request's. */
static inline const struct iovec *aioq_slot_iov(const struct aioq_slot *s)
{
	return s->merged_iov ? s->iov : s->head->iov;
}

struct aioq_engine {
	enum bks_io_engine id;
	/*
	 * Required; bks_aioq_new() calls it once the slots exist.  Sets up
	 * the kernel side for q->depth slots (a context or a ring),
	 * whatever it needs per slot, and a watch on q->loop that calls
	 * aioq_slot_done() for each completion and then aioq_reaped().
	 * Returns 0, or -errno with err set (naming the engine and %m); on
	 * failure, destroy is still called.
	 */
	int (*setup)(struct bks_aioq *q, struct bks_error *err);
	/* Required; frees what setup made (also a half-done setup).  Only
	 * called with nothing in flight. */
	void (*destroy)(struct bks_aioq *q);
	/*
	 * Required; aioq.c calls it at the deferred point with slots
	 * batch[0..n) prepared (n >= 1).  Hands them to the kernel in
	 * order.  Returns how many the kernel took (1..n, those first), 0
	 * when it is out of resources and took none (aioq.c retries after
	 * a completion, or a timer), or -errno about batch[0] alone, not
	 * taken (aioq.c fails its requests and offers the rest again).  An
	 * engine that queues slots it could not get into the kernel yet
	 * counts them as taken and sets q->engine_stalled: aioq.c then
	 * calls submit with n == 0 after a completion or on the timer.
	 */
	int (*submit)(struct bks_aioq *q, struct aioq_slot **batch, int n);
};

extern const struct aioq_engine bks_aioq_engine_libaio;
extern const struct aioq_engine bks_aioq_engine_uring;

struct bks_aioq {
	struct bks_loop *loop;
	struct bks_offload *off;
	unsigned int depth;
	const struct aioq_engine *engine;
	void *eng;		/* the engine's own state */
	struct bks_watch watch; /* the engine's completion fd */
	struct bks_defer defer;
	struct bks_timer retry;

	struct aioq_slot *slots;
	struct aioq_slot *free_slots;
	struct iovec *iovs;	  /* depth * BKS_AIOQ_MAX_IOV */
	struct aioq_slot **batch; /* one batch for engine->submit */

	/* Requests queued and not yet in a slot, oldest first.  Those from
	 * pend_uncounted on have not been counted as deferred yet. */
	struct bks_req *pend_head, *pend_tail, *pend_uncounted;

	/* The engine said it is out of resources: submit nothing until a
	 * completion (or the retry timer, when nothing is in flight) says
	 * to try again. */
	bool blocked;
	/* The engine holds taken slots it still has to pass on (see
	 * aioq_engine.submit). */
	bool engine_stalled;
	/* Flush was refused (-EINVAL): flush with fdatasync(), on the
	 * offload pool. */
	bool no_fdsync;
	/* Inside a loop callback; bks_aioq_free() waits for it to end. */
	unsigned int busy;
	bool dead;

	struct bks_aioq_stats stats;
};

/*
 * For engines, from their completion watch: slot s ended with res (bytes
 * transferred or -errno); completes its requests (callbacks run).  Call
 * aioq_enter() before the first and aioq_reaped() after the last.
 */
void aioq_slot_done(struct bks_aioq *q, struct aioq_slot *s, long res);
void aioq_enter(struct bks_aioq *q);
/* Ends the completion pass: retries waiting work.  Returns true if the
 * queue was freed meanwhile (the engine must not touch it). */
bool aioq_reaped(struct bks_aioq *q);
/* Arm the retry timer (the engine is stalled with nothing to wake it). */
void aioq_arm_retry(struct bks_aioq *q);

#endif /* BLKSTACK_AIOQ_INTERNAL_H */
