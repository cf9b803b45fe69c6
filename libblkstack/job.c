/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The frame of the jobs (include/blkstack/job.h): the config checks, the
 * pool of requests and buffers, the chunk pipeline, the pause while
 * somebody else drains the chain, progress, cancel and done.  What a
 * commit and a stream add is in job-commit.c and job-stream.c.
 *
 * Everything runs from one deferred call, job_run(): completions only
 * record their result and schedule it, so that no completion (which may
 * come inside its own submission) ever recurses into the pipeline.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/chain.h"
#include "blkstack/job.h"
/*
 * Only for the chain's loop: chain.h has no accessor for it and the
 * contract's bks_job_config has no loop member (the report asks for a
 * bks_chain_loop()).
 */
#include "chain-internal.h"
#include "job-internal.h"

static const char *const phase_names[] = {
    [BKS_JOB_SCANNING] = "scanning",
    [BKS_JOB_COPYING] = "copying",
    [BKS_JOB_CONVERGING] = "converging",
    [BKS_JOB_SWITCHING] = "switching",
    [BKS_JOB_DONE] = "done",
    [BKS_JOB_CANCELLED] = "cancelled",
    [BKS_JOB_FAILED] = "failed",
};

const char *bks_job_phase_name(enum bks_job_phase phase)
{
	return (unsigned int)phase <= BKS_JOB_FAILED ? phase_names[phase] : "?";
}

const char *bks_job_kind_name(enum bks_job_kind kind)
{
	switch (kind) {
	case BKS_JOB_COMMIT:
		return "commit";
	case BKS_JOB_STREAM:
		return "stream";
	}
	return "?";
}

static const char *kind_name(const struct bks_job *job)
{
	return bks_job_kind_name(job->cfg.kind);
}

/* ---- helpers for the kinds ----------------------------------------------- */

int job_fail(struct bks_job *job, int r, const char *fmt, ...)
{
	char msg[BKS_ERROR_MSG_MAX];
	va_list ap;

	if (r >= 0)
		r = -EIO;
	job->stop = true;
	if (job->result < 0)
		return r; /* the first failure is the one reported */
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	job->result = r;
	bks_error_set(&job->err, -r, "%s: %s", kind_name(job), msg);
	bks_defer_schedule(&job->kick);
	return r;
}

/* Record err (already set by a callee) as the job's failure. */
static int job_fail_err(struct bks_job *job, int r, const struct bks_error *err)
{
	if (r >= 0)
		r = -EIO;
	job->stop = true;
	if (job->result < 0)
		return r;
	job->result = r;
	bks_error_setmsg(&job->err, -r, "%s: %s", kind_name(job),
			 err->msg[0] ? err->msg : strerror(-r));
	bks_defer_schedule(&job->kick);
	return r;
}

static bool test_bit(const uint64_t *map, uint64_t i)
{
	return map[i / 64] >> (i % 64) & 1;
}

static uint64_t chunk_bytes(const struct bks_job *job, uint64_t c)
{
	uint64_t start = c * job->chunk;

	return job->size - start < job->chunk ? job->size - start : job->chunk;
}

void job_mark(struct bks_job *job, uint64_t offset, uint64_t len)
{
	uint64_t first, last;

	if (len == 0 || offset >= job->size)
		return;
	if (len > job->size - offset)
		len = job->size - offset;
	first = offset / job->chunk;
	last = (offset + len - 1) / job->chunk;
	for (uint64_t c = first; c <= last; c++) {
		if (test_bit(job->dirty, c))
			continue;
		job->dirty[c / 64] |= 1ull << (c % 64);
		job->ndirty++;
		job->total_bytes += chunk_bytes(job, c);
	}
}

/* The next dirty chunk at or after from, or nchunks. */
static uint64_t next_dirty(const struct bks_job *job, uint64_t from)
{
	while (from < job->nchunks) {
		uint64_t w = job->dirty[from / 64] >> (from % 64);

		if (w)
			return from + (uint64_t)__builtin_ctzll(w);
		from = (from / 64 + 1) * 64;
	}
	return job->nchunks;
}

struct bks_layer *job_layer_above(struct bks_job *job, struct bks_layer *l)
{
	for (struct bks_layer *i = bks_chain_top(job->chain); i;
	     i = bks_chain_next_layer(i))
		if (bks_layer_child(i, BKS_CHILD_BACKING) == l)
			return i;
	return NULL;
}

unsigned int job_distance(struct bks_layer *l, struct bks_layer *below)
{
	unsigned int n = 0;

	for (struct bks_layer *i = bks_layer_child(l, BKS_CHILD_BACKING); i;
	     i = bks_layer_child(i, BKS_CHILD_BACKING)) {
		n++;
		if (i == below)
			return n;
		if (n > BKS_CHAIN_MAX_LAYERS)
			break;
	}
	return 0;
}

bool job_below(struct bks_layer *l, struct bks_layer *below)
{
	return job_distance(l, below) > 0;
}

int job_layer_string(struct bks_layer *l, char *buf, size_t size)
{
	const struct bks_driver *drv = bks_layer_driver(l);
	struct bks_chain_spec spec = {.n = 1};

	spec.layers[0].desc = &drv->desc;
	spec.layers[0].args = (char *)bks_layer_args(l);
	return bks_chain_format(&spec, buf, size);
}

bool job_can_set_backing(struct bks_layer *l)
{
	return bks_layer_driver(l)->set_backing != NULL;
}

int job_set_backing(struct bks_layer *l, const char *backing,
		    struct bks_error *err)
{
	const struct bks_driver *drv = bks_layer_driver(l);

	if (!drv->set_backing)
		return bks_error_setmsg(err, EOPNOTSUPP,
					"%s: cannot rewrite its backing file",
					drv->name);
	return drv->set_backing(bks_layer_state(l), l, backing, err);
}

/* ---- the slots: one chunk each ------------------------------------------- */

static void slot_req_done(struct bks_req *req, int result)
{
	struct job_slot *s = req->opaque;

	s->result = result;
	s->ready = true;
	bks_defer_schedule(&s->job->kick);
}

static void slot_granted(struct bks_range_lock *lk)
{
	struct job_slot *s = lk->arg;

	s->result = 0;
	s->ready = true;
	bks_defer_schedule(&s->job->kick);
}

static void slot_submit(struct job_slot *s, struct bks_layer *l, enum bks_op op,
			uint64_t off, uint64_t len)
{
	struct bks_req *req = &s->req;

	memset(req, 0, sizeof(*req));
	req->op = op;
	req->offset = off;
	req->len = len;
	req->done = slot_req_done;
	req->opaque = s;
	if (op == BKS_OP_READ || op == BKS_OP_WRITE) {
		s->iov.iov_base = s->buf;
		s->iov.iov_len = len;
		req->iov = &s->iov;
		req->iovcnt = 1;
	} else if (op == BKS_OP_BLOCK_STATUS) {
		req->extents = s->ext;
		req->extents_max = JOB_SLOT_EXT;
	}
	bks_layer_submit(l, req);
}

static void slot_end(struct job_slot *s, int r)
{
	struct bks_job *job = s->job;

	if (s->locked) {
		bks_chain_unlock_range(job->chain, &s->lock);
		s->locked = false;
	}
	s->step = SLOT_IDLE;
	job->busy--;
	if (r < 0)
		return;
	job->done_bytes += s->end - s->start;
}

static void slot_status(struct job_slot *s)
{
	s->step = SLOT_STATUS;
	slot_submit(s, s->job->src, BKS_OP_BLOCK_STATUS, s->pos,
		    s->end - s->pos);
}

/* Walk the answer from s->next: copy the next wanted extent, or end. */
static void slot_walk(struct job_slot *s)
{
	struct bks_job *job = s->job;

	while (s->next < s->n) {
		const struct bks_extent *e = &s->ext[s->next];
		uint64_t len;

		if (e->offset != s->pos || e->length == 0) {
			job_fail(job, -EIO,
				 "block status at %" PRIu64 ": an answer "
				 "at %" PRIu64 " (+%" PRIu64 ")",
				 s->pos, e->offset, e->length);
			slot_end(s, -EIO);
			return;
		}
		len = e->length < s->end - s->pos ? e->length : s->end - s->pos;
		if (e->depth < job->depth_lo || e->depth >= job->depth_hi) {
			s->pos += len;
			s->next++;
			continue;
		}
		s->seg_off = s->pos;
		s->seg_len = len;
		s->seg_zero = e->flags & BKS_EXTENT_ZERO;
		if (s->seg_zero && job->dst_zeroes) {
			s->step = SLOT_WRITE;
			slot_submit(s, job->dst, BKS_OP_WRITE_ZEROES,
				    s->seg_off, len);
		} else if (s->seg_zero) {
			memset(s->buf, 0, len);
			s->step = SLOT_WRITE;
			slot_submit(s, job->dst, BKS_OP_WRITE, s->seg_off, len);
		} else {
			s->step = SLOT_READ;
			slot_submit(s, job->src, BKS_OP_READ, s->seg_off, len);
		}
		return;
	}
	if (s->pos < s->end) {
		slot_status(s);
		return;
	}
	slot_end(s, 0);
}

/* The step of s finished with s->result: go on. */
static void slot_advance(struct job_slot *s)
{
	struct bks_job *job = s->job;
	int r = s->result;

	/* Stopping: the chunk is left half copied, which is consistent
	 * (each write puts into dst only what reads the same through it). */
	if (job->stop && s->step != SLOT_IDLE) {
		slot_end(s, r < 0 ? r : -ECANCELED);
		return;
	}
	switch (s->step) {
	case SLOT_LOCK:
		slot_status(s);
		return;
	case SLOT_STATUS:
		if (r < 0) {
			job_fail(job, r,
				 "block status at %" PRIu64 " (+%" PRIu64
				 "): %s",
				 s->pos, s->end - s->pos, strerror(-r));
			break;
		}
		s->n = s->req.nextents;
		s->next = 0;
		slot_walk(s);
		return;
	case SLOT_READ:
		if (r < 0) {
			job_fail(job, r,
				 "read at %" PRIu64 " (+%" PRIu64 "): %s",
				 s->seg_off, s->seg_len, strerror(-r));
			break;
		}
		s->step = SLOT_WRITE;
		slot_submit(s, job->dst, BKS_OP_WRITE, s->seg_off, s->seg_len);
		return;
	case SLOT_WRITE:
		if (r < 0) {
			job_fail(job, r, "%s at %" PRIu64 " (+%" PRIu64 "): %s",
				 s->seg_zero && job->dst_zeroes ? "write-zeroes"
								: "write",
				 s->seg_off, s->seg_len, strerror(-r));
			break;
		}
		s->pos = s->seg_off + s->seg_len;
		s->next++;
		slot_walk(s);
		return;
	case SLOT_IDLE:
		return;
	}
	slot_end(s, r);
}

/* Start s copying the n grains from grain c on. */
static void slot_start(struct job_slot *s, uint64_t c, uint64_t n)
{
	struct bks_job *job = s->job;
	int r;

	job->busy++;
	s->start = s->pos = c * job->chunk;
	s->end = s->start + (n - 1) * job->chunk + chunk_bytes(job, c + n - 1);
	s->n = s->next = 0;
	if (!job->use_lock) {
		slot_status(s);
		return;
	}
	memset(&s->lock, 0, sizeof(s->lock));
	s->lock.offset = s->start;
	s->lock.len = s->end - s->start;
	s->lock.granted = slot_granted;
	s->lock.arg = s;
	s->step = SLOT_LOCK;
	r = bks_chain_lock_range(job->chain, &s->lock);
	if (r < 0) {
		job_fail(job, r, "lock %" PRIu64 " (+%" PRIu64 "): %s",
			 s->start, s->end - s->start, strerror(-r));
		slot_end(s, r);
		return;
	}
	s->locked = true;
}

/* ---- the pipeline -------------------------------------------------------- */

static void job_end(struct bks_job *job, int result);

static void req_done_flag(struct bks_req *req, int result)
{
	struct bks_job *job = req->opaque;

	if (req == &job->scan_req) {
		job->scan_result = result;
		job->scan_ready = true;
	} else {
		job->flush_result = result;
		job->flush_ready = true;
	}
	bks_defer_schedule(&job->kick);
}

/* True (and the timer armed) if a drain we do not own is begun. */
static bool paused(struct bks_job *job)
{
	if (job->in_drain || !bks_chain_draining(job->chain))
		return false;
	if (!job->pause.armed)
		bks_timer_arm(&job->pause, JOB_PAUSE_NS);
	return true;
}

static void scan_next(struct bks_job *job)
{
	struct bks_req *req = &job->scan_req;

	memset(req, 0, sizeof(*req));
	req->op = BKS_OP_BLOCK_STATUS;
	req->offset = job->scan_pos;
	req->len = job->size - job->scan_pos;
	req->extents = job->scan_ext;
	req->extents_max = JOB_SCAN_EXT;
	req->done = req_done_flag;
	req->opaque = job;
	job->scan_busy = true;
	bks_layer_submit(job->src, req);
}

static void scan_answer(struct bks_job *job)
{
	struct bks_req *req = &job->scan_req;
	uint64_t pos = job->scan_pos;

	job->scan_busy = false;
	if (job->scan_result < 0) {
		job_fail(job, job->scan_result,
			 "block status at %" PRIu64 ": %s", pos,
			 strerror(-job->scan_result));
		return;
	}
	for (uint32_t i = 0; i < req->nextents; i++) {
		const struct bks_extent *e = &job->scan_ext[i];

		if (e->offset != pos || e->length == 0 ||
		    e->length > job->size - pos) {
			job_fail(job, -EIO,
				 "block status at %" PRIu64 ": an answer at "
				 "%" PRIu64 " (+%" PRIu64 ")",
				 pos, e->offset, e->length);
			return;
		}
		if (e->depth >= job->depth_lo && e->depth < job->depth_hi)
			job_mark(job, e->offset, e->length);
		pos += e->length;
	}
	job->scan_pos = pos;
}

/* Start copies of the pass's next dirty chunks into the free slots. */
static void fill_slots(struct bks_job *job)
{
	for (unsigned int i = 0; i < job->nslots && !job->stop; i++) {
		struct job_slot *s = &job->slots[i];
		uint64_t c, n;

		if (s->step != SLOT_IDLE)
			continue;
		if (job->state == JS_COPY && paused(job))
			return;
		c = next_dirty(job, job->cursor);
		if (c >= job->nchunks) {
			job->cursor = job->nchunks;
			return;
		}
		/* Cleared before the copy reads: a guest write completing
		 * from now on marks the chunk again. */
		n = 0;
		do {
			job->dirty[(c + n) / 64] &= ~(1ull << ((c + n) % 64));
			job->ndirty--;
			n++;
		} while (c + n < job->nchunks &&
			 (n + 1) * job->chunk <= job->span &&
			 test_bit(job->dirty, c + n));
		job->cursor = c + n;
		slot_start(s, c, n);
	}
}

static void final_drained(void *arg)
{
	struct bks_job *job = arg;

	job->state = JS_FINAL_COPY;
	job->cursor = 0;
	bks_defer_schedule(&job->kick);
}

static void setup_drained(void *arg)
{
	struct bks_job *job = arg;
	struct bks_error err = {0};
	int r;

	if (!job->stop) {
		r = job->kind->prepare(job, &err);
		if (r < 0) {
			job_fail_err(job, r, &err);
		} else {
			job->prepared = true;
			job->state = JS_SCAN;
		}
	}
	job->in_drain = false;
	bks_chain_drain_end(job->chain);
	if (job->stop) {
		job_end(job, job->result < 0 ? job->result : -ECANCELED);
		return;
	}
	bks_defer_schedule(&job->kick);
}

static void cleanup_drained(void *arg)
{
	struct bks_job *job = arg;

	if (job->kind->undo)
		job->kind->undo(job);
	job->prepared = false;
	job->in_drain = false;
	bks_chain_drain_end(job->chain);
	job_end(job, job->result < 0 ? job->result : -ECANCELED);
}

/* Begin one drain of ours, calling fn when drained: false if the chain
 * has no room for another waiter now (then try again later). */
static bool job_drain(struct bks_job *job, void (*fn)(void *arg))
{
	if (bks_chain_drain_begin(job->chain, fn, job) < 0) {
		if (!job->pause.armed)
			bks_timer_arm(&job->pause, JOB_PAUSE_NS);
		return false;
	}
	job->in_drain = true;
	return true;
}

/* Stopped (cancel or failure) and nothing in flight: undo, then end. */
static void job_stopped(struct bks_job *job)
{
	int result = job->result < 0 ? job->result : -ECANCELED;

	if (job->in_drain) { /* the final drain: undo inside it */
		if (job->prepared && job->kind->undo)
			job->kind->undo(job);
		job->prepared = false;
		job->in_drain = false;
		bks_chain_drain_end(job->chain);
		job->held_ns = bks_now_ns() - job->drain_ns;
		job_end(job, result);
		return;
	}
	if (job->prepared && job->kind->undo) {
		if (job_drain(job, cleanup_drained))
			job->state = JS_CLEANUP_WAIT;
		return;
	}
	job_end(job, result);
}

/* The pass is over (every slot idle, the cursor at the end). */
static void pass_over(struct bks_job *job)
{
	job->passes++;
	if (job->watch_dirty && job->ndirty > JOB_FEW_CHUNKS &&
	    job->passes < JOB_MAX_PASSES) {
		job->cursor = 0;
		job->phase = BKS_JOB_CONVERGING;
		return;
	}
	job->state = JS_FINAL_WAIT;
	job->phase = BKS_JOB_SWITCHING;
}

static void final_switch(struct bks_job *job)
{
	struct bks_error err = {0};
	int r;

	r = job->kind->finish(job, &err);
	if (r < 0) {
		job_fail_err(job, r, &err);
		job_stopped(job);
		return;
	}
	job->prepared = false;
	job->in_drain = false;
	bks_chain_drain_end(job->chain);
	job->held_ns = bks_now_ns() - job->drain_ns;
	job_end(job, 0);
}

static void job_run(struct bks_defer *d)
{
	struct bks_job *job = d->opaque;

	if (job->state == JS_ENDED)
		return;
	for (unsigned int i = 0; i < job->nslots; i++) {
		struct job_slot *s = &job->slots[i];

		/* A step may finish inside its own submission: loop. */
		while (s->ready) {
			s->ready = false;
			slot_advance(s);
		}
	}
	if (job->scan_ready) {
		job->scan_ready = false;
		scan_answer(job);
	}
	if (job->flush_ready) {
		job->flush_ready = false;
		job->flush_busy = false;
		if (job->flush_result < 0)
			job_fail(job, job->flush_result, "flush: %s",
				 strerror(-job->flush_result));
		else if (job->state == JS_FINAL_FLUSH) {
			final_switch(job);
			return;
		}
	}
	if (job->stop) {
		if (job->state == JS_SETUP || job->state == JS_CLEANUP_WAIT)
			return; /* their drained call ends the job */
		if (job->busy || job->scan_busy || job->flush_busy)
			return; /* their completions come back here */
		if (job->state == JS_FINAL_WAIT && job->in_drain)
			return; /* final_drained has not run yet */
		job_stopped(job);
		return;
	}
	switch (job->state) {
	case JS_SETUP:
	case JS_CLEANUP_WAIT:
	case JS_ENDED:
	case JS_FINAL_FLUSH:
		return;
	case JS_SCAN:
		if (job->scan_busy || paused(job))
			return;
		if (job->scan_pos < job->size) {
			scan_next(job);
			return;
		}
		job->state = JS_COPY;
		job->phase = BKS_JOB_COPYING;
		job->cursor = 0;
		/* fall through */
	case JS_COPY:
		fill_slots(job);
		if (job->busy || job->cursor < job->nchunks || job->stop)
			return;
		pass_over(job);
		if (job->state == JS_COPY) {
			bks_defer_schedule(&job->kick);
			return;
		}
		/* fall through */
	case JS_FINAL_WAIT:
		if (job->in_drain || paused(job))
			return;
		if (job_drain(job, final_drained))
			job->drain_ns = bks_now_ns();
		return;
	case JS_FINAL_COPY:
		fill_slots(job);
		if (job->busy || job->cursor < job->nchunks)
			return;
		if (job->ndirty) { /* nothing writes while drained, but... */
			job->cursor = 0;
			bks_defer_schedule(&job->kick);
			return;
		}
		job->state = JS_FINAL_FLUSH;
		memset(&job->flush_req, 0, sizeof(job->flush_req));
		job->flush_req.op = BKS_OP_FLUSH;
		job->flush_req.done = req_done_flag;
		job->flush_req.opaque = job;
		job->flush_busy = true;
		bks_layer_submit(job->dst, &job->flush_req);
		return;
	}
}

static void pause_fire(struct bks_timer *t)
{
	struct bks_job *job = t->opaque;

	bks_defer_schedule(&job->kick);
}

static void done_fire(struct bks_defer *d)
{
	struct bks_job *job = d->opaque;

	job->cfg.done(job->cfg.arg, job->result, &job->err);
}

static void job_end(struct bks_job *job, int result)
{
	job->state = JS_ENDED;
	job->ended_ns = bks_now_ns();
	job->result = result;
	if (result == 0) {
		job->phase = BKS_JOB_DONE;
		bks_error_clear(&job->err);
	} else if (result == -ECANCELED && job->err.code == 0) {
		job->phase = BKS_JOB_CANCELLED;
		bks_error_setmsg(&job->err, ECANCELED, "%s: cancelled",
				 kind_name(job));
	} else {
		job->phase = BKS_JOB_FAILED;
	}
	bks_timer_cancel(&job->pause);
	bks_defer_cancel(&job->kick);
	bks_defer_schedule(&job->done_cb);
}

/* ---- the API ------------------------------------------------------------- */

static int check_config(const struct bks_job_config *cfg, struct bks_error *err)
{
	if (!cfg)
		return bks_error_setmsg(err, EINVAL, "job: no config");
	if (cfg->kind != BKS_JOB_COMMIT && cfg->kind != BKS_JOB_STREAM)
		return bks_error_setmsg(err, EINVAL, "job: unknown kind %d",
					(int)cfg->kind);
	if (!cfg->chain)
		return bks_error_setmsg(err, EINVAL, "%s: no chain",
					bks_job_kind_name(cfg->kind));
	if (!cfg->done)
		return bks_error_setmsg(err, EINVAL, "%s: no done callback",
					bks_job_kind_name(cfg->kind));
	if (cfg->depth > JOB_DEPTH_MAX)
		return bks_error_setmsg(
		    err, EINVAL, "%s: depth %u (at most %u)",
		    bks_job_kind_name(cfg->kind), cfg->depth, JOB_DEPTH_MAX);
	if (cfg->chunk > JOB_CHUNK_MAX)
		return bks_error_setmsg(
		    err, EINVAL, "%s: chunk %u (at most %u)",
		    bks_job_kind_name(cfg->kind), cfg->chunk, JOB_CHUNK_MAX);
	return 0;
}

/* The chunk, the bitmap, the slots and their buffers. */
static int job_alloc(struct bks_job *job, struct bks_error *err)
{
	const struct bks_info *si = bks_next_info(job->src);
	const struct bks_info *di = bks_next_info(job->dst);
	uint32_t block =
	    si->block_size > di->block_size ? si->block_size : di->block_size;
	uint64_t chunk = job->cfg.chunk ? job->cfg.chunk : JOB_CHUNK_DEFAULT;
	size_t align = block < 4096 ? 4096 : block;
	const char *name = kind_name(job);

	if (chunk % block)
		return bks_error_setmsg(err, EINVAL,
					"%s: chunk %" PRIu64
					" is not a multiple of the block "
					"size %u",
					name, chunk, block);
	if (job->size % block)
		return bks_error_setmsg(err, EINVAL,
					"%s: size %" PRIu64
					" is not a multiple of the block "
					"size %u",
					name, job->size, block);
	/* A read or a write never exceeds a chunk: keep it within max_io. */
	if (si->max_io && chunk > si->max_io)
		chunk = si->max_io - si->max_io % block;
	if (di->max_io && chunk > di->max_io)
		chunk = di->max_io - di->max_io % block;
	if (chunk == 0)
		return bks_error_setmsg(err, EINVAL,
					"%s: max_io below the block size %u",
					name, block);
	job->span = chunk;
	job->chunk = chunk < JOB_GRAIN ? chunk : JOB_GRAIN;
	if (job->chunk % block) /* a block over 64 KiB: one block a grain */
		job->chunk = block;
	job->nchunks = (job->size + job->chunk - 1) / job->chunk;
	job->nslots = job->cfg.depth ? job->cfg.depth : JOB_DEPTH_DEFAULT;
	job->dirty = calloc((job->nchunks + 63) / 64 + 1, sizeof(uint64_t));
	job->slots = calloc(job->nslots, sizeof(*job->slots));
	if (!job->dirty || !job->slots ||
	    posix_memalign((void **)&job->bufs, align, job->nslots * chunk))
		return bks_error_set(err, ENOMEM,
				     "%s: %u buffers of %" PRIu64 " bytes",
				     name, job->nslots, chunk);
	for (unsigned int i = 0; i < job->nslots; i++) {
		job->slots[i].job = job;
		job->slots[i].buf = job->bufs + i * chunk;
	}
	return 0;
}

void bks_job_free(struct bks_job *job)
{
	if (!job)
		return;
	bks_timer_cancel(&job->pause);
	bks_defer_cancel(&job->kick);
	bks_defer_cancel(&job->done_cb);
	free(job->bufs);
	free(job->slots);
	free(job->dirty);
	free(job);
}

int bks_job_start(struct bks_job **out, const struct bks_job_config *cfg,
		  struct bks_error *err)
{
	struct bks_job *job = NULL;
	int r;

	if (!out)
		return bks_error_setmsg(err, EINVAL, "job: no place for it");
	*out = NULL;
	r = check_config(cfg, err);
	if (r < 0)
		return r;
	job = calloc(1, sizeof(*job));
	if (!job)
		return bks_error_set(err, ENOMEM, "%s",
				     bks_job_kind_name(cfg->kind));
	job->cfg = *cfg;
	job->chain = cfg->chain;
	job->loop = cfg->chain->loop;
	bks_defer_init(job->loop, &job->kick, job_run, job);
	bks_defer_init(job->loop, &job->done_cb, done_fire, job);
	bks_timer_init(job->loop, &job->pause, pause_fire, job);
	r = cfg->kind == BKS_JOB_COMMIT ? job_commit_init(job, err)
					: job_stream_init(job, err);
	if (r < 0)
		goto out;
	job->dst_zeroes =
	    bks_next_info(job->dst)->ops & BKS_OPF(BKS_OP_WRITE_ZEROES);
	r = job_alloc(job, err);
	if (r < 0)
		goto out;
	job->started_ns = bks_now_ns();
	job->phase = BKS_JOB_SCANNING;
	if (job->kind->prepare) {
		job->state = JS_SETUP;
		r = bks_chain_drain_begin(job->chain, setup_drained, job);
		if (r < 0) {
			bks_error_setmsg(err, -r,
					 "%s: drain: too many drains waiting",
					 kind_name(job));
			goto out;
		}
		job->in_drain = true;
	} else {
		job->state = JS_SCAN;
		bks_defer_schedule(&job->kick);
	}
	*out = job;
	job = NULL;
out:
	bks_job_free(job);
	return r;
}

void bks_job_cancel(struct bks_job *job)
{
	if (!job || job->state == JS_ENDED || job->stop)
		return;
	/* The final switch has begun: too late, it finishes. */
	if (job->state == JS_FINAL_COPY || job->state == JS_FINAL_FLUSH ||
	    (job->state == JS_FINAL_WAIT && job->in_drain))
		return;
	job->stop = true;
	bks_defer_schedule(&job->kick);
}

void bks_job_get_progress(const struct bks_job *job,
			  struct bks_job_progress *out)
{
	memset(out, 0, sizeof(*out));
	if (!job)
		return;
	out->kind = job->cfg.kind;
	out->phase = job->phase;
	out->done_bytes = job->done_bytes;
	out->total_bytes = job->total_bytes;
	out->passes = job->passes;
	out->held_ns = job->held_ns;
	out->started_ns = job->started_ns;
	out->elapsed_ns =
	    (job->state == JS_ENDED ? job->ended_ns : bks_now_ns()) -
	    job->started_ns;
}
