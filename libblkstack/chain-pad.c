/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Padding: the chain takes read, write, write_zeroes and discard at any
 * byte, and its layers see only whole blocks (after QEMU's request
 * padding in block/io.c; the code is our own).
 *
 * Why a piece of the framework (chain-pad.c) and not an align: layer:
 * the padding must see every request that enters the chain, from every
 * export, to serialise overlapping writes across all of them; it must
 * never show up among the chain's layers (blkstack-ctl lists them, and
 * the chain's info -- its block size above all -- must stay that of the
 * real top layer); and its pieces must count as the chain's own requests,
 * so that a drain waits for a read-modify-write as a whole, never for
 * half of one.  So chain.c hands it every request at the top
 * (bks_pad_take(), below the drain's parking and above the layers).
 *
 *   - An aligned read passes.  An aligned write, write_zeroes or discard
 *     passes too, but is tracked (the "active" list) while it is in the
 *     chain, so that a read-modify-write can wait for it.
 *   - A read with partial blocks becomes one read of the whole blocks:
 *     the partial head and tail blocks land in bounce blocks, the whole
 *     ones straight in the caller's buffers, and the bytes asked for are
 *     copied out of the bounce blocks.
 *   - A write with partial blocks is a read-modify-write: the partial
 *     head and tail blocks are read into bounce blocks, the caller's bytes
 *     copied over them, and one write of the whole blocks goes down
 *     (bounce head, the caller's whole blocks, bounce tail).
 *   - write_zeroes with partial blocks: the partial blocks are read,
 *     cleared in part and written back; the whole blocks between get a
 *     write_zeroes of their own.
 *   - A discard is a hint: it shrinks to the whole blocks inside (none:
 *     done at once, successfully).
 *   - Writes (all three kinds) overlapping each other where one is a
 *     read-modify-write are serialised in arrival order: a
 *     read-modify-write starts only when no write it overlaps is in the
 *     chain, and a write waits for every earlier one it conflicts with.
 *     Writes that do not overlap a read-modify-write never wait.
 *
 * Memory.  A padded request needs a slot: a sub-request and two bounce
 * blocks (aligned for O_DIRECT), from a pool allocated when the chain is
 * opened (BKS_PAD_SLOTS).  When every slot is in use, requests wait for
 * one, in order: nothing allocates on the data path.  The whole blocks of
 * a padded request are the caller's buffers, so the caller places them as
 * the sink needs (see bks_chain_buf_skew() in chain.h); there is no copy
 * of them, and at most BKS_PAD_IOV_MAX - 2 iovecs of them.
 *
 * Waiters are started from a deferred call on the loop, never inside a
 * completion (a synchronous driver would otherwise nest them).
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/iov.h"
#include "chain-pad.h"

/* Bounce blocks are aligned to this much at least (O_DIRECT). */
#define PAD_BUF_ALIGN 4096u

enum pad_flag {
	PAD_TRACKED = 1u << 0, /* a write: on the active list when started */
	PAD_RMW = 1u << 1,     /* its partial blocks are read first */
	PAD_SLOT = 1u << 2,    /* needs a slot (padded) */
	PAD_ACTIVE = 1u << 3,  /* on the active list */
	PAD_WAITING = 1u << 4, /* on the wait list */
	PAD_LOCK = 1u << 5,    /* a range lock's place (bks_pad_lock()) */
};

/* One sub-request of a slot's plan. */
enum pad_step {
	STEP_READ,	 /* the whole blocks, partial ones into bounce */
	STEP_WRITE,	 /* the whole blocks, partial ones from bounce */
	STEP_READ_HEAD,	 /* the head block into bounce 0 */
	STEP_READ_TAIL,	 /* the tail block into bounce 1 */
	STEP_WRITE_HEAD, /* bounce 0 back */
	STEP_WRITE_TAIL, /* bounce 1 back */
	STEP_ZERO,	 /* write_zeroes of the whole blocks between */
	STEP_DISCARD,	 /* discard of the whole blocks inside */
};

#define PAD_MAX_STEPS 5

struct bks_pad_slot {
	struct bks_pad *pad;
	struct bks_pad_slot *next_free;
	struct bks_req *parent;
	struct bks_req sub;
	unsigned char *bounce[2]; /* head and tail block */
	struct iovec iov[BKS_PAD_IOV_MAX];
	enum pad_step plan[PAD_MAX_STEPS];
	unsigned int nsteps, step;
	bool merged;
};

/* ---- small helpers ------------------------------------------------------- */

static uint64_t down(uint64_t v, uint32_t bs)
{
	return v & ~(uint64_t)(bs - 1);
}

static uint64_t up(uint64_t v, uint32_t bs)
{
	return down(v + bs - 1, bs);
}

static void list_add_tail(struct bks_pad_list *l, struct bks_req *r)
{
	r->pad_next = NULL;
	r->pad_prev = l->tail;
	if (l->tail)
		l->tail->pad_next = r;
	else
		l->head = r;
	l->tail = r;
}

static void list_del(struct bks_pad_list *l, struct bks_req *r)
{
	if (r->pad_prev)
		r->pad_prev->pad_next = r->pad_next;
	else
		l->head = r->pad_next;
	if (r->pad_next)
		r->pad_next->pad_prev = r->pad_prev;
	else
		l->tail = r->pad_prev;
	r->pad_prev = r->pad_next = NULL;
}

/* ---- which request needs what -------------------------------------------- */

static bool op_writes(enum bks_op op)
{
	return op == BKS_OP_WRITE || op == BKS_OP_WRITE_ZEROES ||
	       op == BKS_OP_DISCARD;
}

/*
 * Would the chain's own checks refuse req before looking at alignment?
 * Then it passes, and they do (with the errno they give).
 */
static bool refused_anyway(const struct bks_pad *pad, const struct bks_req *req)
{
	const struct bks_info *info = pad->info;
	uint32_t allowed = req->op == BKS_OP_WRITE ? BKS_REQ_FUA
			   : req->op == BKS_OP_WRITE_ZEROES
			       ? BKS_REQ_FUA | BKS_REQ_NO_HOLE
			       : 0;

	if (op_writes(req->op) && info->read_only)
		return true;
	if (!(info->ops & BKS_OPF(req->op)) || (req->flags & ~allowed))
		return true;
	if ((req->flags & BKS_REQ_FUA) && !info->can_fua)
		return true;
	return (req->flags & BKS_REQ_NO_HOLE) && !info->zero_no_hole;
}

/* Do the iovecs of req hold exactly len bytes? */
static bool iov_ok(const struct bks_req *req)
{
	uint64_t total = 0;

	if (!req->iov || req->iovcnt < 1 || req->iovcnt > IOV_MAX)
		return false;
	for (int i = 0; i < req->iovcnt; i++)
		total += req->iov[i].iov_len;
	return total == req->len;
}

/*
 * Work out what req needs: its flags and the block range [pad_a, pad_b)
 * it touches.  Returns 0, 1 when it is done already (*result says how),
 * or -1 when it passes untouched.
 */
static int classify(const struct bks_pad *pad, struct bks_req *req, int *result)
{
	uint32_t bs = pad->bs;
	uint64_t end = req->offset + req->len;
	bool aligned = (req->offset | req->len) % bs == 0;

	req->pad_flags = 0;
	if (req->op != BKS_OP_READ && !op_writes(req->op))
		return -1; /* flush, or an invalid op: the checks see to it */
	if (req->len == 0 || refused_anyway(pad, req))
		return -1;
	if (!aligned && pad->bs > pad->stride) {
		/* Reopened with larger blocks than the bounce blocks. */
		*result = -EINVAL;
		return 1;
	}
	if (aligned) {
		if (req->op == BKS_OP_READ)
			return -1;
		/* Out of bounds: the checks refuse it. */
		if (req->offset > pad->info->size ||
		    req->len > pad->info->size - req->offset)
			return -1;
		req->pad_flags = PAD_TRACKED;
		req->pad_a = req->offset;
		req->pad_b = end;
		return 0;
	}
	if (req->offset > pad->info->size ||
	    req->len > pad->info->size - req->offset) {
		*result = req->op == BKS_OP_READ ? -EINVAL : -ENOSPC;
		return 1;
	}
	if ((req->op == BKS_OP_READ || req->op == BKS_OP_WRITE) &&
	    !iov_ok(req)) {
		*result = -EINVAL;
		return 1;
	}
	if (req->op == BKS_OP_DISCARD) {
		req->pad_a = up(req->offset, bs);
		req->pad_b = down(end, bs);
		if (req->pad_a >= req->pad_b) {
			*result = 0; /* less than a block: a hint we drop */
			return 1;
		}
		req->pad_flags = PAD_TRACKED | PAD_SLOT;
		return 0;
	}
	req->pad_a = down(req->offset, bs);
	req->pad_b = up(end, bs);
	req->pad_flags = PAD_SLOT;
	if (req->op != BKS_OP_READ)
		req->pad_flags |= PAD_TRACKED | PAD_RMW;
	return 0;
}

/* Do x and y conflict: overlapping writes, one a read-modify-write? */
static bool conflict(const struct bks_req *x, const struct bks_req *y)
{
	return (y->pad_flags & PAD_TRACKED) && x->pad_a < y->pad_b &&
	       y->pad_a < x->pad_b && ((x->pad_flags | y->pad_flags) & PAD_RMW);
}

/*
 * Must write req wait?  Yes if it conflicts with a write in the chain, or
 * with an earlier waiter (writes stay in arrival order).
 */
static bool blocked(const struct bks_pad *pad, const struct bks_req *req)
{
	const struct bks_req *r;

	if (!(req->pad_flags & PAD_TRACKED))
		return false;
	if (pad->active_rmw == 0 && !(req->pad_flags & PAD_RMW) &&
	    !pad->wait.head)
		return false;
	for (r = pad->active.head; r; r = r->pad_next) {
		if (conflict(req, r))
			return true;
	}
	for (r = pad->wait.head; r && r != req; r = r->pad_next) {
		if (conflict(req, r))
			return true;
	}
	return false;
}

/* ---- slots: the padded requests ------------------------------------------ */

static void slot_step(struct bks_pad_slot *s);

/* Something a waiter may wait for has come back: start waiters later. */
static void pad_kick(struct bks_pad *pad)
{
	if (pad->wait.head)
		bks_defer_schedule(&pad->defer);
}

/*
 * A write (or a lock) leaves the chain.  A write's watches hear of it
 * here, before its submitter: the one test the data path pays for them
 * is the pointer test, and only for writes.
 */
static void deactivate(struct bks_pad *pad, struct bks_req *req, int result)
{
	if (!(req->pad_flags & PAD_ACTIVE))
		return;
	list_del(&pad->active, req);
	req->pad_flags &= ~PAD_ACTIVE;
	if (req->pad_flags & PAD_RMW)
		pad->active_rmw--;
	pad_kick(pad);
	if (pad->watches && !(req->pad_flags & PAD_LOCK)) {
		for (struct bks_write_watch *w = pad->watches; w; w = w->next)
			w->fn(w, req->op, req->offset, req->len, result);
	}
}

/* The padded request of s is finished with result. */
static void slot_finish(struct bks_pad_slot *s, int result)
{
	struct bks_pad *pad = s->pad;
	struct bks_req *req = s->parent;

	s->parent = NULL;
	s->next_free = pad->free;
	pad->free = s;
	pad->nfree++;
	pad_kick(pad);
	deactivate(pad, req, result);
	pad->ops->finish(pad->arg, req, result);
}

/* Disk offsets of the head and tail bounce blocks of req. */
static uint64_t head_block(const struct bks_req *req)
{
	return req->pad_a;
}

static uint64_t tail_block(const struct bks_pad *pad, const struct bks_req *req)
{
	return req->pad_b - pad->bs;
}

static bool has_head(const struct bks_pad *pad, const struct bks_req *req)
{
	return req->offset % pad->bs != 0;
}

static bool has_tail(const struct bks_pad *pad, const struct bks_req *req)
{
	return (req->offset + req->len) % pad->bs != 0;
}

/* One block holds both ends: it is the head block (bounce 0). */
static bool one_block(const struct bks_pad *pad, const struct bks_req *req)
{
	return req->pad_b - req->pad_a == pad->bs;
}

/*
 * Copy the bytes of req that fall in bounce block k (at disk offset blk)
 * between the block and req's iovecs (to_iov for reads).
 */
static void bounce_copy(struct bks_pad_slot *s, int k, uint64_t blk,
			bool to_iov)
{
	struct bks_req *req = s->parent;
	uint64_t end = req->offset + req->len;
	uint64_t from = req->offset > blk ? req->offset : blk;
	uint64_t to = end < blk + s->pad->bs ? end : blk + s->pad->bs;

	if (from >= to)
		return;
	if (to_iov)
		bks_iov_from_buf(req, from - req->offset,
				 s->bounce[k] + (from - blk),
				 (size_t)(to - from));
	else
		bks_iov_to_buf(req, from - req->offset,
			       s->bounce[k] + (from - blk),
			       (size_t)(to - from));
}

/*
 * Put the client's bytes together with the partial blocks read into the
 * bounce blocks: a write's bytes over them, write_zeroes' zeroes.
 */
static void slot_merge(struct bks_pad_slot *s)
{
	struct bks_pad *pad = s->pad;
	struct bks_req *req = s->parent;
	uint64_t end = req->offset + req->len;
	bool head = has_head(pad, req), tail = has_tail(pad, req);

	s->merged = true;
	if (req->op == BKS_OP_WRITE) {
		if (head || one_block(pad, req))
			bounce_copy(s, 0, head_block(req), false);
		if (tail && !one_block(pad, req))
			bounce_copy(s, 1, tail_block(pad, req), false);
		return;
	}
	if (one_block(pad, req)) {
		memset(s->bounce[0] + (req->offset - req->pad_a), 0, req->len);
		return;
	}
	if (head)
		memset(s->bounce[0] + (req->offset - req->pad_a), 0,
		       pad->bs - (req->offset - req->pad_a));
	if (tail)
		memset(s->bounce[1], 0, end - tail_block(pad, req));
}

/*
 * The iovecs of the whole span [pad_a, pad_b) of a read or write: bounce
 * head, the caller's whole blocks, bounce tail.  Returns 0 or -EINVAL.
 */
static int span_iov(struct bks_pad_slot *s)
{
	struct bks_pad *pad = s->pad;
	struct bks_req *req = s->parent, *sub = &s->sub;
	bool head = has_head(pad, req), tail = has_tail(pad, req);
	uint64_t mid_a = head ? req->pad_a + pad->bs : req->pad_a;
	uint64_t mid_b = tail ? req->pad_b - pad->bs : req->pad_b;
	int n = 0, rc;

	if (one_block(pad, req)) {
		s->iov[n].iov_base = s->bounce[0];
		s->iov[n++].iov_len = pad->bs;
		goto out;
	}
	if (head) {
		s->iov[n].iov_base = s->bounce[0];
		s->iov[n++].iov_len = pad->bs;
	}
	if (mid_a < mid_b) {
		/* The last iovec is kept for the tail block. */
		rc = bks_iov_slice(req, mid_a - req->offset, mid_b - mid_a,
				   s->iov, &n, BKS_PAD_IOV_MAX - 1);
		if (rc < 0)
			return -EINVAL;
	}
	if (tail) {
		s->iov[n].iov_base = s->bounce[1];
		s->iov[n++].iov_len = pad->bs;
	}
out:
	sub->iov = s->iov;
	sub->iovcnt = n;
	return 0;
}

static void slot_sub_done(struct bks_req *sub, int result)
{
	struct bks_pad_slot *s = sub->opaque;

	if (result < 0) {
		slot_finish(s, result);
		return;
	}
	if (s->plan[s->step] == STEP_READ) {
		/* The partial blocks' bytes the caller asked for. */
		struct bks_req *req = s->parent;

		if (has_head(s->pad, req) || one_block(s->pad, req))
			bounce_copy(s, 0, head_block(req), true);
		if (has_tail(s->pad, req) && !one_block(s->pad, req))
			bounce_copy(s, 1, tail_block(s->pad, req), true);
	}
	s->step++;
	slot_step(s);
}

/* Submit the current step of s's plan, or finish after the last. */
static void slot_step(struct bks_pad_slot *s)
{
	struct bks_pad *pad = s->pad;
	struct bks_req *req = s->parent, *sub = &s->sub;
	uint32_t bs = pad->bs, fua = req->flags & BKS_REQ_FUA;
	bool head = has_head(pad, req), tail = has_tail(pad, req);
	enum pad_step st;
	int rc;

	if (s->step == s->nsteps) {
		slot_finish(s, 0);
		return;
	}
	st = s->plan[s->step];
	if ((req->pad_flags & PAD_RMW) && !s->merged && st != STEP_READ_HEAD &&
	    st != STEP_READ_TAIL)
		slot_merge(s);
	memset(sub, 0, sizeof(*sub));
	sub->done = slot_sub_done;
	sub->opaque = s;
	sub->offset = req->pad_a;
	sub->len = req->pad_b - req->pad_a;
	switch (st) {
	case STEP_READ:
	case STEP_WRITE:
		sub->op = st == STEP_READ ? BKS_OP_READ : BKS_OP_WRITE;
		sub->flags = st == STEP_WRITE ? fua : 0;
		rc = span_iov(s);
		if (rc < 0) {
			slot_finish(s, rc);
			return;
		}
		break;
	case STEP_READ_HEAD:
	case STEP_WRITE_HEAD:
	case STEP_READ_TAIL:
	case STEP_WRITE_TAIL: {
		bool is_head = st == STEP_READ_HEAD || st == STEP_WRITE_HEAD;

		sub->op = st == STEP_READ_HEAD || st == STEP_READ_TAIL
			      ? BKS_OP_READ
			      : BKS_OP_WRITE;
		sub->flags = sub->op == BKS_OP_WRITE ? fua : 0;
		sub->offset = is_head ? head_block(req) : tail_block(pad, req);
		sub->len = bs;
		s->iov[0].iov_base = s->bounce[is_head ? 0 : 1];
		s->iov[0].iov_len = bs;
		sub->iov = s->iov;
		sub->iovcnt = 1;
		break;
	}
	case STEP_ZERO:
		/* The whole blocks; partial ones went from bounce. */
		sub->op = BKS_OP_WRITE_ZEROES;
		sub->flags = req->flags;
		sub->offset = head ? req->pad_a + bs : req->pad_a;
		sub->len = (tail ? req->pad_b - bs : req->pad_b) - sub->offset;
		break;
	case STEP_DISCARD:
		sub->op = BKS_OP_DISCARD;
		break;
	}
	pad->ops->issue(pad->arg, sub);
}

/* The plan of the padded request s->parent (see the top of the file). */
static void slot_plan(struct bks_pad_slot *s)
{
	struct bks_pad *pad = s->pad;
	struct bks_req *req = s->parent;
	bool head = has_head(pad, req), tail = has_tail(pad, req);
	bool same = one_block(pad, req);
	uint32_t bs = pad->bs;

	s->nsteps = s->step = 0;
	s->merged = false;
	switch (req->op) {
	case BKS_OP_READ:
		s->plan[s->nsteps++] = STEP_READ;
		return;
	case BKS_OP_DISCARD:
		s->plan[s->nsteps++] = STEP_DISCARD;
		return;
	default:
		break;
	}
	if (head || same)
		s->plan[s->nsteps++] = STEP_READ_HEAD;
	if (tail && !same)
		s->plan[s->nsteps++] = STEP_READ_TAIL;
	if (req->op == BKS_OP_WRITE) {
		s->plan[s->nsteps++] = STEP_WRITE;
		return;
	}
	if (head || same)
		s->plan[s->nsteps++] = STEP_WRITE_HEAD;
	if (tail && !same)
		s->plan[s->nsteps++] = STEP_WRITE_TAIL;
	if (!same && (head ? req->pad_a + bs : req->pad_a) <
			 (tail ? req->pad_b - bs : req->pad_b))
		s->plan[s->nsteps++] = STEP_ZERO;
}

/* ---- starting ------------------------------------------------------------ */

/*
 * Start req (it waits for nothing).  Returns true if the pad has it, false
 * if the chain should pass it down now (from bks_pad_take() only).
 */
static bool start(struct bks_pad *pad, struct bks_req *req, bool taken)
{
	struct bks_pad_slot *s;

	if (req->pad_flags & PAD_TRACKED) {
		list_add_tail(&pad->active, req);
		req->pad_flags |= PAD_ACTIVE;
		if (req->pad_flags & PAD_RMW)
			pad->active_rmw++;
	}
	if (req->pad_flags & PAD_LOCK) {
		/* A lock: in place now; its owner hears from the loop. */
		pad->ops->granted(pad->arg, req);
		return true;
	}
	if (!(req->pad_flags & PAD_SLOT)) {
		/* It goes down as it is; bks_pad_done() when it is done. */
		if (taken)
			pad->ops->resubmit(pad->arg, req);
		return taken;
	}
	s = pad->free;
	pad->free = s->next_free;
	pad->nfree--;
	s->parent = req;
	slot_plan(s);
	slot_step(s);
	return true;
}

/* Can waiter req start now? */
static bool may_start(const struct bks_pad *pad, const struct bks_req *req)
{
	if ((req->pad_flags & PAD_SLOT) && pad->nfree == 0)
		return false;
	return !blocked(pad, req);
}

/* The deferred call: start the waiters that may go, in arrival order. */
static void start_waiters(struct bks_defer *d)
{
	struct bks_pad *pad = d->opaque;
	struct bks_req *req = pad->wait.head, *next;

	for (; req; req = next) {
		next = req->pad_next;
		if (!may_start(pad, req))
			continue;
		/*
		 * A completion inside start() never touches the wait list
		 * (it only schedules this call again): next stays valid.
		 * A request submitted from inside one joins at the tail.
		 */
		list_del(&pad->wait, req);
		req->pad_flags &= ~PAD_WAITING;
		if (!(req->pad_flags & PAD_LOCK))
			pad->stats.waiting--;
		if (req->pad_flags & PAD_SLOT)
			pad->wait_slot--;
		start(pad, req, true);
	}
}

void bks_pad_done(struct bks_pad *pad, struct bks_req *req, int result)
{
	deactivate(pad, req, result);
}

/* ---- range locks: a place among the writes ------------------------------- */

/*
 * A lock is a request of its own on the pad's lists: tracked and flagged
 * a read-modify-write, it conflicts with every write it overlaps (see
 * conflict()), so the rules that order overlapping writes order it too,
 * and the writes' fast path (blocked()) needs no test of its own for it:
 * a held lock counts in active_rmw, a waiting one is on the wait list.
 */
void bks_pad_lock(struct bks_pad *pad, struct bks_req *req, uint64_t a,
		  uint64_t b)
{
	req->pad_flags = PAD_LOCK | PAD_TRACKED | PAD_RMW;
	req->pad_a = a;
	req->pad_b = b;
	if (blocked(pad, req)) {
		list_add_tail(&pad->wait, req);
		req->pad_flags |= PAD_WAITING;
		return;
	}
	start(pad, req, false);
}

void bks_pad_unlock(struct bks_pad *pad, struct bks_req *req)
{
	if (req->pad_flags & PAD_WAITING) {
		list_del(&pad->wait, req);
		req->pad_flags &= ~PAD_WAITING;
		pad_kick(pad);
	} else {
		deactivate(pad, req, 0);
	}
	req->pad_flags = 0;
}

bool bks_pad_take(struct bks_pad *pad, struct bks_req *req)
{
	int result = 0, rc;
	bool slot_short;

	/* The same while requests are in flight: it changes only drained. */
	pad->info = pad->ops->info(pad->arg);
	pad->bs = pad->info->block_size;
	rc = classify(pad, req, &result);
	if (rc < 0)
		return false;
	if (rc > 0) {
		pad->stats.padded++;
		pad->ops->finish(pad->arg, req, result);
		return true;
	}
	if (req->pad_flags & PAD_SLOT)
		pad->stats.padded++;
	if (req->pad_flags & PAD_RMW)
		pad->stats.rmw++;
	/* Waiters for a slot go first: a newcomer does not overtake them. */
	slot_short = (req->pad_flags & PAD_SLOT) &&
		     (pad->nfree == 0 || pad->wait_slot > 0);
	if (slot_short || blocked(pad, req)) {
		if (slot_short)
			pad->stats.bounce_waits++;
		else
			pad->stats.overlap_waits++;
		list_add_tail(&pad->wait, req);
		req->pad_flags |= PAD_WAITING;
		pad->stats.waiting++;
		if (req->pad_flags & PAD_SLOT)
			pad->wait_slot++;
		return true;
	}
	return start(pad, req, false);
}

/* ---- set-up -------------------------------------------------------------- */

int bks_pad_init(struct bks_pad *pad, const struct bks_pad_ops *ops, void *arg,
		 struct bks_loop *loop, uint32_t bs)
{
	size_t stride;
	void *p = NULL;

	memset(pad, 0, sizeof(*pad));
	bks_defer_init(loop, &pad->defer, start_waiters, pad);
	stride = bs > PAD_BUF_ALIGN ? bs : PAD_BUF_ALIGN;
	pad->slots = calloc(BKS_PAD_SLOTS, sizeof(*pad->slots));
	if (!pad->slots ||
	    posix_memalign(&p, stride, 2 * stride * BKS_PAD_SLOTS) != 0) {
		free(pad->slots);
		pad->slots = NULL;
		return -ENOMEM;
	}
	pad->ops = ops;
	pad->arg = arg;
	pad->stride = (uint32_t)stride;
	pad->bounce = p;
	pad->nslots = BKS_PAD_SLOTS;
	for (unsigned int i = pad->nslots; i-- > 0;) {
		struct bks_pad_slot *s = &pad->slots[i];

		s->pad = pad;
		s->bounce[0] = pad->bounce + 2 * stride * i;
		s->bounce[1] = s->bounce[0] + stride;
		s->next_free = pad->free;
		pad->free = s;
	}
	pad->nfree = pad->nslots;
	return 0;
}

void bks_pad_fini(struct bks_pad *pad)
{
	if (!pad->ops)
		return;
	bks_defer_cancel(&pad->defer);
	free(pad->slots);
	free(pad->bounce);
	memset(pad, 0, sizeof(*pad));
}
