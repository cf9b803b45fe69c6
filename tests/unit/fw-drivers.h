/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Test drivers for the chain framework's unit tests, compiled into the
 * tests and opened with bks_chain_open_with(chain, s, fw_test_drivers,
 * ...): they are not in the registry and never ship.  Header-only
 * (static), like unit-util.h.
 *
 *   fmt:[lazy|fail]  a filter that behaves like an image format over its
 *                    file child: the first FMT_DATA_OFF bytes of the child
 *                    are metadata, block 0 a "table" holding a write
 *                    counter.  A write reads the table (a sub-request),
 *                    then writes the data (the request itself, shifted)
 *                    and the table (the sub-request again) in parallel,
 *                    joined under the request.  With "lazy" the request
 *                    completes when its data is written and the table
 *                    write goes on in the background (a drain must wait
 *                    for it).  Block status reads the table first.  With
 *                    one sub-request per write, a write waits for a free
 *                    one when the pool (FMT_SUBREQS) is exhausted.  It
 *                    reopens with other args; "fail" makes that prepare
 *                    fail.
 *   hold:            a filter that keeps every request until the test
 *                    releases it (hold_release()), in arrival order: what
 *                    makes completions come later, as from a disk.
 *   rec:[max=SIZE][,absorb]
 *                    a filter that records each discard and write_zeroes
 *                    it sees (the first REC_MAX, and a count) and, with
 *                    max, limits both to SIZE bytes; with absorb it
 *                    completes them itself, before its op returns.
 */
#ifndef BLKSTACK_FW_DRIVERS_H
#define BLKSTACK_FW_DRIVERS_H

#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "blkstack/chain.h"

/* ---- fmt: ---------------------------------------------------------------- */

#define FMT_DATA_OFF 4096u
#define FMT_SUBREQS  2u
#define FMT_TABLE    512u

struct fmt_state {
	bool lazy, new_lazy;
	unsigned int waits;   /* writes that waited for a sub-request */
	unsigned int aborts;  /* reopen_abort calls */
	unsigned int commits; /* reopen_commit calls */
};

/* Per sub-request: the write it serves, and the table block. */
struct fmt_ctx {
	struct bks_layer *self;
	struct bks_req *sub; /* the one this is the data of */
	struct bks_req *parent;
	struct bks_join join;
	struct iovec iov;
	uint64_t table[FMT_TABLE / 8]; /* [0]: writes counted */
};

static int fmt_args(const char *args, bool *lazy, struct bks_error *err)
{
	if (strcmp(args, "") == 0 || strcmp(args, "lazy") == 0) {
		*lazy = *args != '\0';
		return 0;
	}
	if (strcmp(args, "fail") == 0) {
		*lazy = false;
		return 0;
	}
	return bks_error_setmsg(err, EINVAL, "fmt: bad args '%s'", args);
}

static int fmt_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct fmt_state *s = state;

	(void)self;
	return fmt_args(args->args, &s->lazy, err);
}

static int fmt_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	(void)state;
	(void)self;
	if (info->size <= FMT_DATA_OFF)
		return -EINVAL;
	info->size -= FMT_DATA_OFF;
	return 0;
}

static struct bks_layer *fmt_file(struct bks_layer *self)
{
	return bks_layer_child(self, BKS_CHILD_FILE);
}

/* Shifted to the data area and back. */
static int fmt_unshift(struct bks_req *req, int result, void *arg)
{
	(void)arg;
	req->offset -= FMT_DATA_OFF;
	return result;
}

static int fmt_read(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)state;
	req->offset += FMT_DATA_OFF;
	return bks_next_submit_hook(fmt_file(self), req, fmt_unshift, NULL);
}

static void fmt_joined(struct bks_join *join, int result)
{
	struct fmt_ctx *ctx = join->arg;
	struct bks_req *parent = ctx->parent;

	bks_subreq_put(ctx->self, ctx->sub);
	bks_req_complete(parent, result);
}

/* The data write is done: joined, or (lazy) the request completes. */
static int fmt_data_done(struct bks_req *req, int result, void *arg)
{
	struct fmt_ctx *ctx = arg;

	req->offset -= FMT_DATA_OFF;
	if (((struct fmt_state *)bks_layer_state(ctx->self))->lazy)
		return result;
	bks_join_put(&ctx->join, result);
	return BKS_REQ_HELD;
}

static void fmt_table_written(struct bks_req *sub, int result)
{
	struct fmt_ctx *ctx = bks_subreq_data(sub);

	if (((struct fmt_state *)bks_layer_state(ctx->self))->lazy) {
		bks_subreq_put(ctx->self, sub);
		return;
	}
	bks_join_put(&ctx->join, result);
}

static void fmt_table_read(struct bks_req *sub, int result)
{
	struct fmt_ctx *ctx = bks_subreq_data(sub);
	struct bks_req *parent = ctx->parent;
	bool lazy = ((struct fmt_state *)bks_layer_state(ctx->self))->lazy;

	if (result < 0) {
		bks_subreq_put(ctx->self, sub);
		bks_req_complete(parent, result);
		return;
	}
	bks_join_init(&ctx->join, fmt_joined, ctx);
	/* The data: the request itself, in the data area. */
	if (!lazy)
		bks_join_add(&ctx->join);
	parent->offset += FMT_DATA_OFF;
	bks_next_submit_hook(fmt_file(ctx->self), parent, fmt_data_done, ctx);
	/* The table, counting the write: the sub-request again. */
	ctx->table[0]++;
	sub->op = BKS_OP_WRITE;
	sub->nframes = 0;
	sub->done = fmt_table_written;
	if (!lazy)
		bks_join_add(&ctx->join);
	bks_next_submit(fmt_file(ctx->self), sub);
	if (!lazy)
		bks_join_put(&ctx->join, 0);
}

/* Issue sub's read of the table; done runs when it is read. */
static void fmt_read_table(struct bks_layer *self, struct bks_req *sub,
			   struct bks_req *parent, bks_req_done_fn *done)
{
	struct fmt_ctx *ctx = bks_subreq_data(sub);

	ctx->self = self;
	ctx->sub = sub;
	ctx->parent = parent;
	ctx->iov.iov_base = ctx->table;
	ctx->iov.iov_len = FMT_TABLE;
	sub->op = BKS_OP_READ;
	sub->offset = 0;
	sub->len = FMT_TABLE;
	sub->iov = &ctx->iov;
	sub->iovcnt = 1;
	sub->done = done;
	bks_next_submit(fmt_file(self), sub);
}

static void fmt_write_start(struct bks_layer *self, struct bks_req *req)
{
	struct bks_req *sub = bks_subreq_get(self);

	if (!sub) {
		((struct fmt_state *)bks_layer_state(self))->waits++;
		bks_subreq_wait(self, req, fmt_write_start);
		return;
	}
	fmt_read_table(self, sub, req, fmt_table_read);
}

static int fmt_write(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)state;
	fmt_write_start(self, req);
	return 0;
}

/* Block status: never written (counter 0) is a hole, else data. */
static void fmt_status_read(struct bks_req *sub, int result)
{
	struct fmt_ctx *ctx = bks_subreq_data(sub);
	struct bks_req *parent = ctx->parent;

	if (result == 0) {
		parent->extents[0].offset = parent->offset;
		parent->extents[0].length = parent->len;
		parent->extents[0].flags =
		    ctx->table[0] ? 0 : BKS_EXTENT_HOLE | BKS_EXTENT_ZERO;
		parent->nextents = 1;
	}
	bks_subreq_put(ctx->self, sub);
	bks_req_complete(parent, result);
}

static void fmt_status_start(struct bks_layer *self, struct bks_req *req)
{
	struct bks_req *sub = bks_subreq_get(self);

	if (!sub) {
		bks_subreq_wait(self, req, fmt_status_start);
		return;
	}
	fmt_read_table(self, sub, req, fmt_status_read);
}

static int fmt_block_status(void *state, struct bks_layer *self,
			    struct bks_req *req)
{
	(void)state;
	fmt_status_start(self, req);
	return 0;
}

static int fmt_reopen_prepare(void *state, struct bks_layer *self,
			      const struct bks_open_args *args,
			      struct bks_error *err)
{
	struct fmt_state *s = state;
	int rc;

	(void)self;
	rc = fmt_args(args->args, &s->new_lazy, err);
	if (rc == 0 && strcmp(args->args, "fail") == 0)
		rc = bks_error_setmsg(err, EIO, "fmt: refused to reopen");
	return rc;
}

static void fmt_reopen_commit(void *state, struct bks_layer *self)
{
	struct fmt_state *s = state;

	(void)self;
	s->lazy = s->new_lazy;
	s->commits++;
}

static void fmt_reopen_abort(void *state, struct bks_layer *self)
{
	struct fmt_state *s = state;

	(void)self;
	s->aborts++;
}

static const struct bks_driver fw_driver_fmt = {
    .name = "fmt",
    .kind = BKS_FILTER,
    .usage = "fmt:[lazy|fail]",
    .state_size = sizeof(struct fmt_state),
    .subreq_max = FMT_SUBREQS,
    .subreq_data_size = sizeof(struct fmt_ctx),
    .open = fmt_open,
    .info = fmt_info,
    .read = fmt_read,
    .write = fmt_write,
    .block_status = fmt_block_status,
    .reopen_prepare = fmt_reopen_prepare,
    .reopen_commit = fmt_reopen_commit,
    .reopen_abort = fmt_reopen_abort,
};

/* ---- hold: --------------------------------------------------------------- */

struct hold_state {
	struct bks_req *head, *tail;
	unsigned int n;
	unsigned int drain_begins, drain_ends;
};

static int hold_open(void *state, struct bks_layer *self,
		     const struct bks_open_args *args, struct bks_error *err)
{
	(void)state;
	(void)self;
	(void)args;
	(void)err;
	return 0;
}

static int hold_op(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct hold_state *s = state;

	(void)self;
	req->owner_next = NULL;
	if (s->tail)
		s->tail->owner_next = req;
	else
		s->head = req;
	s->tail = req;
	s->n++;
	return 0;
}

static void hold_drain_begin(void *state, struct bks_layer *self)
{
	(void)self;
	((struct hold_state *)state)->drain_begins++;
}

static void hold_drain_end(void *state, struct bks_layer *self)
{
	(void)self;
	((struct hold_state *)state)->drain_ends++;
}

static const struct bks_driver fw_driver_hold = {
    .name = "hold",
    .kind = BKS_FILTER,
    .usage = "hold:",
    .state_size = sizeof(struct hold_state),
    .open = hold_open,
    .read = hold_op,
    .write = hold_op,
    .flush = hold_op,
    .discard = hold_op,
    .write_zeroes = hold_op,
    .block_status = hold_op,
    .drain_begin = hold_drain_begin,
    .drain_end = hold_drain_end,
};

/* Requests the hold: layer keeps now. */
static inline unsigned int hold_count(struct bks_layer *hold)
{
	return ((struct hold_state *)bks_layer_state(hold))->n;
}

/* The i-th request kept (0 = oldest), or NULL. */
static inline struct bks_req *hold_peek(struct bks_layer *hold, unsigned int i)
{
	struct bks_req *r = ((struct hold_state *)bks_layer_state(hold))->head;

	while (r && i--)
		r = r->owner_next;
	return r;
}

/* Pass the n oldest requests down (they complete from there). */
static inline void hold_release(struct bks_layer *hold, unsigned int n)
{
	struct hold_state *s = bks_layer_state(hold);

	while (n-- && s->head) {
		struct bks_req *req = s->head;

		s->head = req->owner_next;
		if (!s->head)
			s->tail = NULL;
		s->n--;
		bks_next_submit(bks_layer_child(hold, BKS_CHILD_FILE), req);
	}
}

/* ---- rec: ---------------------------------------------------------------- */

#define REC_MAX 64

struct rec_piece {
	enum bks_op op;
	uint64_t offset, len;
};

struct rec_state {
	uint64_t max;
	bool absorb;
	uintptr_t stack_lo, stack_hi; /* where rec_op's frame was */
	unsigned int n;
	struct rec_piece pieces[REC_MAX];
};

static int rec_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct rec_state *s = state;

	char max[32] = "";

	(void)self;
	if (!*args->args)
		return 0;
	if (sscanf(args->args, "max=%31[^,]", max) != 1 ||
	    bks_parse_size(max, &s->max) < 0)
		return bks_error_setmsg(err, EINVAL, "rec: bad args");
	s->absorb = strstr(args->args, ",absorb") != NULL;
	return 0;
}

static int rec_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct rec_state *s = state;

	(void)self;
	if (s->max) {
		info->max_discard = s->max;
		info->max_write_zeroes = s->max;
	}
	return 0;
}

static int rec_op(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct rec_state *s = state;

	if (s->n < REC_MAX) {
		s->pieces[s->n].op = req->op;
		s->pieces[s->n].offset = req->offset;
		s->pieces[s->n].len = req->len;
	}
	s->n++;
	/* How deep the stack is here: a loop keeps it flat. */
	if (!s->stack_lo || (uintptr_t)&s < s->stack_lo)
		s->stack_lo = (uintptr_t)&s;
	if ((uintptr_t)&s > s->stack_hi)
		s->stack_hi = (uintptr_t)&s;
	if (s->absorb) {
		bks_req_complete(req, 0);
		return 0;
	}
	return bks_next_submit(bks_layer_child(self, BKS_CHILD_FILE), req);
}

static const struct bks_driver fw_driver_rec = {
    .name = "rec",
    .kind = BKS_FILTER,
    .usage = "rec:[max=SIZE]",
    .state_size = sizeof(struct rec_state),
    .open = rec_open,
    .info = rec_info,
    .discard = rec_op,
    .write_zeroes = rec_op,
};

static const struct bks_driver *const fw_test_drivers[] = {
    &fw_driver_fmt,
    &fw_driver_hold,
    &fw_driver_rec,
    NULL,
};

#endif /* BLKSTACK_FW_DRIVERS_H */
