/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The file request queue, its engine-independent part: see
 * include/blkstack/aioq.h.  The engines (aioq-libaio.c, aioq-uring.c)
 * fill the ops table of aioq-internal.h.
 *
 * Life of a request:
 *
 *   bks_aioq_queue()  appends it to the pending list (linked through
 *                     req->owner_next) and schedules the deferred call.
 *   submit_pending()  at the loop's deferred point, takes pending requests
 *                     in order into free slots, merging a request into
 *                     the slot before it when they are adjacent, then
 *                     hands the slots to the engine's submit (one
 *                     io_submit() / io_uring_submit()).  Requests that
 *                     find no free slot stay pending ("deferred").
 *   aioq_slot_done()  the engine's completion watch reports each slot;
 *                     its result is split back to its requests, which are
 *                     completed; aioq_reaped() then schedules the deferred
 *                     call so that waiting requests take the freed slots.
 *
 * A flush is a submission of its own (never merged); where the kernel
 * refuses it (-EINVAL: libaio before Linux 4.18), fdatasync() stands in,
 * run on a helper thread of the queue's offload pool: the flush keeps its
 * slot (whose job it uses) until the job is done, so the pool never holds
 * more than depth of them.
 *
 * A slot is a submission plus the list of requests it covers.  Slots,
 * their iovec arrays, the batch array and the engine's own arrays (iocbs,
 * events; or the ring) are all allocated in bks_aioq_new(): the data path
 * never allocates.
 *
 * Completion callbacks may queue requests (or even free the queue, once
 * nothing is left in flight).  So requests are always taken off a slot or
 * a list before they are completed, queueing only appends and schedules
 * (it never submits), and the two entry points from the loop hold the
 * queue "busy" so that a free from inside a callback is finished when
 * they return.
 */
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "aioq-internal.h"
#include "blkstack/aioq.h"
#include "blkstack/offload.h"

/* How long to wait before retrying a submission the engine could not make
 * (out of kernel resources) when no completion is coming to trigger it. */
#define AIOQ_EAGAIN_RETRY_NS (1000u * 1000u)

/* req->owner_data: the fd in the low 32 bits, and this flag. */
#define REQ_COUNTED_DEFERRED (1ull << 32)

static void destroy(struct bks_aioq *q)
{
	bks_watch_del(&q->watch);
	if (q->engine)
		q->engine->destroy(q);
	free(q->slots);
	free(q->iovs);
	free(q->batch);
	free(q);
}

static void enter(struct bks_aioq *q)
{
	q->busy++;
}

/* Returns true if the queue was freed (the caller must not touch it). */
static bool leave(struct bks_aioq *q)
{
	if (--q->busy == 0 && q->dead) {
		destroy(q);
		return true;
	}
	return false;
}

/* ---- lists --------------------------------------------------------------- */

static int req_fd(const struct bks_req *req)
{
	return (int)(uint32_t)req->owner_data;
}

static void pend_push_back(struct bks_aioq *q, struct bks_req *req)
{
	req->owner_next = NULL;
	if (q->pend_tail)
		q->pend_tail->owner_next = req;
	else
		q->pend_head = req;
	q->pend_tail = req;
	if (!q->pend_uncounted)
		q->pend_uncounted = req;
}

static struct bks_req *pend_pop(struct bks_aioq *q)
{
	struct bks_req *req = q->pend_head;

	q->pend_head = req->owner_next;
	if (!q->pend_head)
		q->pend_tail = NULL;
	if (q->pend_uncounted == req)
		q->pend_uncounted = req->owner_next;
	req->owner_next = NULL;
	return req;
}

/* Put the list head..tail back in front of the pending requests. */
static void pend_push_front(struct bks_aioq *q, struct bks_req *head,
			    struct bks_req *tail)
{
	tail->owner_next = q->pend_head;
	if (!q->pend_head)
		q->pend_tail = tail;
	q->pend_head = head;
	q->pend_uncounted = head; /* rare (-EAGAIN): recheck them all */
}

/*
 * Count each pending request once as having waited for a slot.  Only the
 * requests queued since the last call need looking at, so a long wait
 * does not make every submission walk the whole list.
 */
static void count_deferred(struct bks_aioq *q)
{
	for (struct bks_req *r = q->pend_uncounted; r; r = r->owner_next) {
		if (!(r->owner_data & REQ_COUNTED_DEFERRED)) {
			r->owner_data |= REQ_COUNTED_DEFERRED;
			q->stats.deferred++;
		}
	}
	q->pend_uncounted = NULL;
}

static void slot_put(struct bks_aioq *q, struct aioq_slot *s)
{
	s->head = s->tail = NULL;
	s->next_free = q->free_slots;
	q->free_slots = s;
}

/* ---- completion ---------------------------------------------------------- */

static void complete_one(struct bks_aioq *q, struct bks_req *req, int r)
{
	q->stats.completed++;
	if (r < 0)
		q->stats.errors++;
	bks_req_complete(req, r);
}

/*
 * Complete the requests head.. of one iocb of total bytes that ended with
 * res (bytes transferred or -errno).  The list is already off its slot.
 */
static void complete_list(struct bks_aioq *q, struct bks_req *head,
			  uint64_t total, long res)
{
	uint64_t done = 0;
	bool partial = res >= 0 && (uint64_t)res < total;

	if (partial)
		q->stats.partial++;
	while (head) {
		struct bks_req *req = head;
		int r;

		/* Read the link before the callback may reuse req. */
		head = req->owner_next;
		req->owner_next = NULL;
		done += req->len;
		if (res < 0)
			r = (int)res;
		else if (!partial)
			r = 0;
		else
			/* The kernel transfers a prefix: requests that lie
			 * wholly within it are done, the rest are not. */
			r = done <= (uint64_t)res ? 0 : -EIO;
		complete_one(q, req, r);
	}
}

/* Take slot s's requests off it, free it, and complete them with res. */
static void finish_slot(struct bks_aioq *q, struct aioq_slot *s, long res)
{
	struct bks_req *head = s->head;
	uint64_t total = s->bytes;

	slot_put(q, s);
	complete_list(q, head, total, res);
}

/* ---- the fdatasync() fallback for flush ------------------------------------
 */

/* On a helper thread. */
static int fdsync_run(struct bks_offload_job *job)
{
	const struct aioq_slot *s = job->opaque;

	return fdatasync(s->fd) < 0 ? -errno : 0;
}

/* On the loop thread: the flush of slot s is done. */
static void fdsync_done(struct bks_offload_job *job, int result)
{
	struct aioq_slot *s = job->opaque;
	struct bks_aioq *q = s->q;

	enter(q);
	finish_slot(q, s, result);
	if (!q->dead && q->pend_head)
		bks_defer_schedule(&q->defer);
	leave(q);
}

/*
 * A flush the kernel refused as an aio command (kernels before 4.18, or a
 * file system without ->fsync for aio), or one after that: fdatasync() on
 * a helper thread, the slot held meanwhile; from the first refusal on,
 * flushes skip the kernel queue.  Returns 0, or -errno from the pool
 * (then the slot is the caller's still).
 */
static int fdsync_fallback(struct bks_aioq *q, struct aioq_slot *s)
{
	q->no_fdsync = true;
	s->job.fn = fdsync_run;
	s->job.done = fdsync_done;
	s->job.opaque = s;
	return bks_offload_submit(q->off, &s->job);
}

void aioq_enter(struct bks_aioq *q)
{
	enter(q);
}

void aioq_slot_done(struct bks_aioq *q, struct aioq_slot *s, long res)
{
	q->stats.in_flight--;
	if (s->op == BKS_OP_FLUSH && res == -EINVAL) {
		int r = fdsync_fallback(q, s);

		if (r == 0)
			return; /* fdsync_done finishes */
		res = r;
	}
	finish_slot(q, s, res);
}

void aioq_arm_retry(struct bks_aioq *q)
{
	bks_timer_arm(&q->retry, AIOQ_EAGAIN_RETRY_NS);
}

/* The engine holds slots it could not pass on: offer them again. */
static void kick_engine(struct bks_aioq *q)
{
	if (!q->engine_stalled)
		return;
	q->engine_stalled = false;
	q->engine->submit(q, NULL, 0);
}

bool aioq_reaped(struct bks_aioq *q)
{
	/* Slots are free again: let waiting requests have them, in the
	 * deferred call, together with whatever the callbacks queued. */
	q->blocked = false;
	if (!q->dead) {
		kick_engine(q);
		if (q->pend_head)
			bks_defer_schedule(&q->defer);
	}
	return leave(q);
}

/* ---- submission ---------------------------------------------------------- */

/* Does req want RWF_DSYNC?  (FUA means something only for writes.) */
static bool req_dsync(const struct bks_req *req)
{
	return req->op == BKS_OP_WRITE && (req->flags & BKS_REQ_FUA);
}

static bool can_merge(const struct aioq_slot *s, const struct bks_req *req)
{
	return req->op == s->op && req->op != BKS_OP_FLUSH &&
	       req_fd(req) == s->fd && req_dsync(req) == s->dsync &&
	       s->offset + s->bytes == req->offset &&
	       s->iovcnt + req->iovcnt <= BKS_AIOQ_MAX_IOV &&
	       s->bytes + req->len <= BKS_AIOQ_MAX_MERGE;
}

static void slot_start(struct aioq_slot *s, struct bks_req *req)
{
	s->head = s->tail = req;
	s->fd = req_fd(req);
	s->op = req->op;
	s->dsync = req_dsync(req);
	s->offset = req->offset;
	s->bytes = req->len;
	s->iovcnt = req->iovcnt;
	s->merged_iov = false;
}

static void slot_add(struct aioq_slot *s, struct bks_req *req)
{
	if (!s->merged_iov) {
		memcpy(s->iov, s->head->iov,
		       (size_t)s->head->iovcnt * sizeof(*s->iov));
		s->merged_iov = true;
	}
	memcpy(s->iov + s->iovcnt, req->iov,
	       (size_t)req->iovcnt * sizeof(*s->iov));
	s->iovcnt += req->iovcnt;
	s->bytes += req->len;
	s->tail->owner_next = req;
	s->tail = req;
}

/*
 * Give batch[from..n) back: their requests return, in order, to the front
 * of the pending list, and their slots are freed.
 */
static void unbatch(struct bks_aioq *q, int from, int n)
{
	for (int i = n - 1; i >= from; i--) {
		struct aioq_slot *s = q->batch[i];

		pend_push_front(q, s->head, s->tail);
		slot_put(q, s);
	}
}

/* Put slot bad's requests on the failed list with -errno r, free it. */
static void fail_slot(struct bks_aioq *q, struct aioq_slot *bad, int r,
		      struct bks_req **failed, struct bks_req **failed_tail)
{
	for (struct bks_req *req = bad->head; req; req = req->owner_next)
		req->owner_data = (uint64_t)(uint32_t)-r;
	if (*failed)
		(*failed_tail)->owner_next = bad->head;
	else
		*failed = bad->head;
	*failed_tail = bad->tail;
	slot_put(q, bad);
}

static void submit_pending(struct bks_aioq *q)
{
	struct aioq_slot *s = NULL;
	/* Requests the engine refused; owner_data holds each one's -errno
	 * (its fd is no longer needed). */
	struct bks_req *failed = NULL, *failed_tail = NULL;
	int n = 0, done = 0;

	if (q->blocked)
		return;

	/* Fill free slots from the pending list, merging as we go. */
	while (q->pend_head) {
		struct bks_req *req = q->pend_head;
		int r;

		if (s && can_merge(s, req)) {
			slot_add(s, pend_pop(q));
			q->stats.merged++;
			continue;
		}
		if (!q->free_slots)
			break;
		s = q->free_slots;
		q->free_slots = s->next_free;
		slot_start(s, pend_pop(q));
		if (s->op != BKS_OP_FLUSH || !q->no_fdsync) {
			q->batch[n++] = s;
			continue;
		}
		/* No aio fdsync here: straight to the helper thread. */
		r = fdsync_fallback(q, s);
		if (r < 0)
			fail_slot(q, s, r, &failed, &failed_tail);
		s = NULL;
	}
	count_deferred(q);

	while (done < n) {
		int r = q->engine->submit(q, q->batch + done, n - done);
		struct aioq_slot *bad;

		if (r > 0) {
			/* It may take fewer than asked: go on with the rest. */
			done += r;
			q->stats.submitted += (uint64_t)r;
			q->stats.in_flight += (uint64_t)r;
			continue;
		}
		if (r == -EAGAIN || r == 0) {
			/* Out of kernel resources: wait for a completion to
			 * free some, or, with nothing in flight, for a short
			 * timer. */
			unbatch(q, done, n);
			count_deferred(q);
			q->blocked = true;
			if (q->stats.in_flight == 0)
				bks_timer_arm(&q->retry, AIOQ_EAGAIN_RETRY_NS);
			break;
		}
		/*
		 * The kernel refused the first iocb offered (a bad fd, a bad
		 * vector, an unsupported command) and did not look at the
		 * others.  The error is about that iocb: fail its requests
		 * and go on with the rest, which then fail or pass on their
		 * own merits.  They are completed after the loop, so that
		 * callbacks never run in a half-submitted batch.
		 */
		bad = q->batch[done];
		done++;
		/* No aio fdsync here: on a helper thread from now on. */
		if (bad->op == BKS_OP_FLUSH && r == -EINVAL) {
			r = fdsync_fallback(q, bad);
			if (r == 0)
				continue;
		}
		fail_slot(q, bad, r, &failed, &failed_tail);
	}
	while (failed) {
		struct bks_req *req = failed;

		failed = req->owner_next;
		req->owner_next = NULL;
		complete_one(q, req, -(int)(uint32_t)req->owner_data);
	}
}

static void on_defer(struct bks_defer *d)
{
	struct bks_aioq *q = d->opaque;

	enter(q);
	submit_pending(q);
	leave(q);
}

static void on_retry(struct bks_timer *t)
{
	struct bks_aioq *q = t->opaque;

	enter(q);
	q->blocked = false;
	kick_engine(q);
	if (!q->dead)
		submit_pending(q);
	leave(q);
}

/* ---- API ----------------------------------------------------------------- */

int bks_aioq_queue(struct bks_aioq *q, int fd, struct bks_req *req)
{
	switch (req->op) {
	case BKS_OP_READ:
	case BKS_OP_WRITE:
	case BKS_OP_FLUSH:
		break;
	default:
		return -EINVAL;
	}
	if (fd < 0)
		return -EBADF;
	req->owner_data = (uint32_t)fd;
	pend_push_back(q, req);
	q->stats.requests++;
	bks_defer_schedule(&q->defer);
	return 0;
}

/* Set q up on engine e; on failure q holds no engine. */
static int engine_setup(struct bks_aioq *q, const struct aioq_engine *e,
			struct bks_error *err)
{
	int rc;

	q->engine = e;
	rc = e->setup(q, err);
	if (rc < 0) {
		e->destroy(q);
		q->engine = NULL;
	}
	return rc;
}

int bks_aioq_new(struct bks_aioq **out, struct bks_loop *loop,
		 unsigned int depth, enum bks_io_engine engine,
		 struct bks_offload *off, struct bks_error *err)
{
	struct bks_aioq *q;
	int rc;

	*out = NULL;
	if (depth == 0 || depth > 65536)
		return bks_error_setmsg(
		    err, EINVAL, "aio queue depth %u: must be 1..65536", depth);
	if (!off)
		return bks_error_setmsg(err, EINVAL,
					"aio queue: no offload pool");
	if (engine != BKS_IO_ENGINE_AUTO && engine != BKS_IO_ENGINE_LIBAIO &&
	    engine != BKS_IO_ENGINE_URING)
		return bks_error_setmsg(err, EINVAL,
					"aio queue: unknown io engine %d",
					(int)engine);
	q = calloc(1, sizeof(*q));
	if (!q)
		return bks_error_set(err, ENOMEM, "aio queue");
	q->loop = loop;
	q->off = off;
	q->depth = depth;
	q->slots = calloc(depth, sizeof(*q->slots));
	q->iovs = calloc((size_t)depth * BKS_AIOQ_MAX_IOV, sizeof(*q->iovs));
	q->batch = calloc(depth, sizeof(*q->batch));
	if (!q->slots || !q->iovs || !q->batch) {
		rc = bks_error_set(err, ENOMEM, "aio queue of depth %u", depth);
		goto out;
	}
	for (unsigned int i = depth; i-- > 0;) {
		q->slots[i].idx = i;
		q->slots[i].iov = q->iovs + (size_t)i * BKS_AIOQ_MAX_IOV;
		q->slots[i].q = q;
		slot_put(q, &q->slots[i]);
	}
	bks_defer_init(loop, &q->defer, on_defer, q);
	bks_timer_init(loop, &q->retry, on_retry, q);

	if (engine == BKS_IO_ENGINE_LIBAIO)
		rc = engine_setup(q, &bks_aioq_engine_libaio, err);
	else
		rc = engine_setup(q, &bks_aioq_engine_uring, err);
	/* AUTO: io_uring when a ring can be set up, else libaio. */
	if (rc < 0 && engine == BKS_IO_ENGINE_AUTO) {
		bks_error_clear(err);
		rc = engine_setup(q, &bks_aioq_engine_libaio, err);
	}
	if (rc < 0)
		goto out;
	*out = q;
	rc = 0;
out:
	if (rc < 0)
		destroy(q);
	return rc;
}

enum bks_io_engine bks_aioq_engine(const struct bks_aioq *q)
{
	return q->engine->id;
}

void bks_aioq_free(struct bks_aioq *q)
{
	if (!q)
		return;
	bks_watch_del(&q->watch);
	bks_defer_cancel(&q->defer);
	bks_timer_cancel(&q->retry);
	if (q->busy) {
		/* Called from a completion callback: finish on the way out. */
		q->dead = true;
		return;
	}
	destroy(q);
}

void bks_aioq_get_stats(const struct bks_aioq *q, struct bks_aioq_stats *out)
{
	*out = q->stats;
}
