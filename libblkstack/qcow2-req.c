/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The qcow2: driver's guest requests (see qcow2-int.h): a context per
 * request whose cursor walks its range cluster by cluster, issuing a
 * piece per run (data through the aio queue, zeroes, the backing child)
 * and an operation (qcow2-op.c) per cluster whose metadata changes, under
 * a join that completes the request (after a flush, for FUA).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/endian.h"
#include "blkstack/iov.h"
#include "qcow2-int.h"

/* ---- pieces of a request ------------------------------------------------- */

static void qreq_cursor(struct q2_wait *w, int result);

static void piece_done(struct bks_req *sub, int result)
{
	struct q2_sub *d = bks_subreq_data(sub);
	struct qreq *qr = d->owner;

	q2_sub_put(&qr->st->s, sub);
	bks_join_put(&qr->join, result);
}

/* A sub-request for qr's bytes [pos, pos + n) of its buffers (or n
 * zero-source bytes): 0 filled, 1 waiting, -errno. */
static int slice_sub(struct qreq *qr, struct bks_req **out, uint64_t pos,
		     uint64_t n, bool zero_src)
{
	struct qcow2_state *st = qr->st;
	struct bks_req *sub = q2_sub_get(&st->s, &qr->w);
	struct q2_sub *d;
	int cnt = 0, rc = 0;

	*out = NULL;
	if (!sub)
		return 1;
	d = bks_subreq_data(sub);
	d->owner = qr;
	if (zero_src) {
		uint64_t left = n, cs = st->s.g.cluster_size;

		while (left && cnt < Q2_SUB_IOV) {
			uint64_t k = left < cs ? left : cs;

			d->iov[cnt].iov_base = st->zero;
			d->iov[cnt].iov_len = k;
			cnt++;
			left -= k;
		}
		if (left)
			rc = -E2BIG;
	} else {
		rc = bks_iov_slice(qr->req, pos - qr->req->offset, n, d->iov,
				   &cnt, Q2_SUB_IOV);
	}
	if (rc < 0) {
		q2_sub_put(&st->s, sub);
		return rc;
	}
	sub->iov = d->iov;
	sub->iovcnt = cnt;
	sub->len = n;
	sub->done = piece_done;
	*out = sub;
	return 0;
}

/* ---- requests ------------------------------------------------------------ */

void q2_req_submit(struct qcow2_state *st, struct bks_req *req);

static void qreq_free(struct qreq *qr)
{
	struct qcow2_state *st = qr->st;
	struct bks_req *next = st->req_wait_head;

	qr->next_free = st->free_qreqs;
	st->free_qreqs = qr;
	if (next) {
		st->req_wait_head = next->owner_next;
		if (!st->req_wait_head)
			st->req_wait_tail = NULL;
		q2_req_submit(st, next);
	}
}

static void fua_done(struct bks_req *sub, int result)
{
	struct q2_sub *d = bks_subreq_data(sub);
	struct qreq *qr = d->owner;
	struct bks_req *req = qr->req;

	q2_sub_put(&qr->st->s, sub);
	qreq_free(qr);
	bks_req_complete(req, result);
}

static void fua_flush(struct q2_wait *w, int result)
{
	struct qreq *qr = CONTAINER(w, struct qreq, w);
	struct qcow2_state *st = qr->st;
	struct bks_req *sub;

	(void)result;
	sub = q2_sub_get(&st->s, &qr->w);
	if (!sub)
		return;
	((struct q2_sub *)bks_subreq_data(sub))->owner = qr;
	sub->op = BKS_OP_FLUSH;
	sub->done = fua_done;
	bks_aioq_queue(st->s.q, st->s.img.fd, sub);
}

static void qreq_joined(struct bks_join *join, int result)
{
	struct qreq *qr = join->arg;
	struct bks_req *req = qr->req;

	if (result == 0 && (req->flags & BKS_REQ_FUA) &&
	    req->op != BKS_OP_READ) {
		qr->w.fn = fua_flush;
		fua_flush(&qr->w, 0);
		return;
	}
	qreq_free(qr);
	bks_req_complete(req, result);
}

/* Append an extent to req's answer, merging with the last. */
static bool ext_add(struct bks_req *req, uint64_t off, uint64_t len,
		    uint32_t flags, uint32_t depth)
{
	if (len == 0)
		return true;
	if (req->nextents) {
		struct bks_extent *e = &req->extents[req->nextents - 1];

		if (e->flags == flags && e->depth == depth &&
		    e->offset + e->length == off) {
			e->length += len;
			return true;
		}
	}
	if (req->nextents == req->extents_max)
		return false;
	req->extents[req->nextents++] = (struct bks_extent){
	    .offset = off, .length = len, .flags = flags, .depth = depth};
	return true;
}

static void bs_backing_done(struct bks_req *sub, int result)
{
	struct q2_sub *d = bks_subreq_data(sub);
	struct qreq *qr = d->owner;
	struct bks_req *req = qr->req;

	if (result == 0) {
		for (uint32_t i = 0; i < sub->nextents; i++)
			if (!ext_add(req, sub->extents[i].offset,
				     sub->extents[i].length,
				     sub->extents[i].flags,
				     /* 0: in no image, ours included */
				     sub->extents[i].depth
					 ? sub->extents[i].depth + 1
					 : 0))
				break;
	}
	q2_sub_put(&qr->st->s, sub);
	bks_join_put(&qr->join, result);
}

/* Block status: returns 0 done (or a backing query issued), 1 waiting. */
static int cursor_block_status(struct qreq *qr)
{
	struct qcow2_state *st = qr->st;
	struct bks_req *req = qr->req;

	while (qr->pos < qr->end) {
		struct bks_qcow2_l2 l2;
		struct q2_slot *slot;
		uint64_t n;
		enum cls c;
		int rc = q2_lookup(st, qr->pos, &qr->w, &l2, &slot);

		if (rc == 1)
			return 1;
		if (rc < 0) {
			qr->join.result =
			    qr->join.result ? qr->join.result : rc;
			return 0;
		}
		c = q2_classify(st, &l2);
		n = q2_run_bytes(st, qr->pos, qr->end, &l2, c, slot, false,
				 UINT_MAX);
		if (c == CL_BACKING) {
			struct bks_req *sub;
			struct q2_sub *d;
			uint64_t bend = qr->pos + n;

			if (qr->pos >= st->backing_size) {
				if (!ext_add(req, qr->pos, n,
					     BKS_EXTENT_HOLE | BKS_EXTENT_ZERO,
					     0))
					return 0;
				qr->pos += n;
				continue;
			}
			if (bend > st->backing_size)
				bend = st->backing_size;
			sub = q2_sub_get(&st->s, &qr->w);
			if (!sub)
				return 1;
			d = bks_subreq_data(sub);
			d->owner = qr;
			sub->op = BKS_OP_BLOCK_STATUS;
			sub->offset = qr->pos;
			sub->len = bend - qr->pos;
			sub->extents = d->ext;
			sub->extents_max = Q2_SUB_EXT;
			sub->done = bs_backing_done;
			qr->pos = qr->end; /* the answer ends there */
			bks_join_add(&qr->join);
			bks_next_submit(st->backing, sub);
			return 0;
		}
		if (!ext_add(req, qr->pos, n,
			     c == CL_ZERO   ? BKS_EXTENT_ZERO
			     : c == CL_HOLE ? BKS_EXTENT_HOLE | BKS_EXTENT_ZERO
					    : 0,
			     c == CL_HOLE ? 0 : 1))
			return 0;
		qr->pos += n;
	}
	return 0;
}

/* Reads: 0 done issuing, 1 waiting. */
static int cursor_read(struct qreq *qr)
{
	struct qcow2_state *st = qr->st;
	struct q2 *s = &st->s;
	const struct bks_qcow2_geom *g = &s->g;

	while (qr->pos < qr->end) {
		struct bks_qcow2_l2 l2;
		struct q2_slot *slot;
		struct bks_req *sub;
		uint64_t n, in = bks_qcow2_in_cluster(g, qr->pos);
		enum cls c;
		int rc = q2_lookup(st, qr->pos, &qr->w, &l2, &slot);

		if (rc == 1)
			return 1;
		if (rc < 0)
			goto fail;
		c = q2_classify(st, &l2);
		n = q2_run_bytes(st, qr->pos, qr->end, &l2, c, slot, false,
				 Q2_SUB_IOV);
		switch (c) {
		case CL_ZERO:
		case CL_HOLE:
			bks_iov_zero(qr->req, qr->pos - qr->req->offset, n);
			break;
		case CL_BACKING:
			if (qr->pos + n > st->backing_size) {
				uint64_t from = qr->pos > st->backing_size
						    ? qr->pos
						    : st->backing_size;

				bks_iov_zero(qr->req, from - qr->req->offset,
					     qr->pos + n - from);
				if (qr->pos >= st->backing_size)
					break;
				n = st->backing_size - qr->pos;
			}
			rc = slice_sub(qr, &sub, qr->pos, n, false);
			if (rc == 1)
				return 1;
			if (rc < 0)
				goto fail;
			sub->op = BKS_OP_READ;
			sub->offset = qr->pos;
			bks_join_add(&qr->join);
			bks_next_submit(st->backing, sub);
			break;
		case CL_DATA:
			if (l2.host_offset + in + n > s->read_end) {
				/* Past the last whole block: zeroes. */
				uint64_t h = l2.host_offset + in;
				uint64_t keep =
				    h < s->read_end ? s->read_end - h : 0;

				bks_iov_zero(qr->req,
					     qr->pos + keep - qr->req->offset,
					     n - keep);
				if (keep == 0)
					break;
				rc = slice_sub(qr, &sub, qr->pos, keep, false);
			} else {
				rc = slice_sub(qr, &sub, qr->pos, n, false);
			}
			if (rc == 1)
				return 1;
			if (rc < 0)
				goto fail;
			sub->op = BKS_OP_READ;
			sub->offset = l2.host_offset + in;
			bks_join_add(&qr->join);
			bks_aioq_queue(s->q, s->img.fd, sub);
			break;
		case CL_COMPRESSED: {
			struct qop *op = q2_op_get(st, qr);

			if (!op)
				return 1;
			q2_op_start(op, QOP_CREAD, qr->pos >> g->cluster_bits,
				    (uint32_t)in, (uint32_t)(in + n),
				    qr->pos - qr->req->offset, &l2);
			break;
		}
		}
		qr->pos += n;
	}
	return 0;
fail:
	bks_join_add(&qr->join);
	bks_join_put(&qr->join, -EIO);
	qr->pos = qr->end;
	return 0;
}

/* What a discard or write_zeroes makes of a whole cluster: false to leave
 * it; else *ne the new entry, *free_old whether the old cluster goes. */
static bool zero_entry(struct qcow2_state *st, const struct bks_req *req,
		       const struct bks_qcow2_l2 *l2, uint64_t *ne,
		       bool *free_old, bool *write_zeroes)
{
	bool v3 = st->s.h.version >= 3;
	bool owned = l2->copied && (l2->type == BKS_QCOW2_NORMAL ||
				    l2->type == BKS_QCOW2_ZERO_ALLOC);
	bool keep =
	    req->op == BKS_OP_WRITE_ZEROES && (req->flags & BKS_REQ_NO_HOLE);

	*free_old = false;
	*write_zeroes = false;
	if (!v3) {
		if (st->has_backing) {
			/* No zero flag: zeroes must be written. */
			*write_zeroes = req->op == BKS_OP_WRITE_ZEROES;
			return false;
		}
		if (l2->type == BKS_QCOW2_UNALLOCATED)
			return false;
		if (keep) {
			*write_zeroes = true;
			return false;
		}
		*ne = 0;
		*free_old = owned;
		return true;
	}
	if (keep && owned) {
		*ne = bks_qcow2_l2_make_zero(l2->host_offset, true);
		return l2->type != BKS_QCOW2_ZERO_ALLOC;
	}
	if (!st->has_backing) {
		*ne = 0;
		*free_old = owned;
		return l2->type != BKS_QCOW2_UNALLOCATED;
	}
	*ne = bks_qcow2_l2_make_zero(0, false);
	*free_old = owned;
	return l2->type != BKS_QCOW2_ZERO_PLAIN;
}

/* Writes, write_zeroes, discard: 0 done issuing, 1 waiting. */
static int cursor_write(struct qreq *qr)
{
	struct qcow2_state *st = qr->st;
	struct q2 *s = &st->s;
	const struct bks_qcow2_geom *g = &s->g;
	struct bks_req *req = qr->req;
	uint64_t cs = g->cluster_size;

	while (qr->pos < qr->end) {
		struct bks_qcow2_l2 l2;
		struct q2_slot *slot;
		struct bks_req *sub;
		uint64_t in = bks_qcow2_in_cluster(g, qr->pos);
		uint64_t gc = qr->pos >> g->cluster_bits;
		uint64_t n =
		    cs - in < qr->end - qr->pos ? cs - in : qr->end - qr->pos;
		bool whole = in == 0 && (n == cs || qr->pos + n >= s->h.size);
		bool zero_src = req->op != BKS_OP_WRITE;
		struct qop *op;
		enum cls c;
		int rc = q2_lookup(st, qr->pos, &qr->w, &l2, &slot);

		if (rc == 1)
			return 1;
		if (rc < 0)
			goto fail;
		c = q2_classify(st, &l2);
		if (req->op != BKS_OP_WRITE) {
			uint64_t ne = 0;
			bool free_old, wz;

			if (!whole) {
				/* Part of a cluster: a discard leaves it;
				 * zeroes are written unless it reads as
				 * zeroes already. */
				if (req->op == BKS_OP_DISCARD || c == CL_ZERO ||
				    c == CL_HOLE) {
					qr->pos += n;
					continue;
				}
			} else if (zero_entry(st, req, &l2, &ne, &free_old,
					      &wz)) {
				if (q2_op_locked(st, gc)) {
					q2_wlist_add(
					    &q2_op_locked(st, gc)->lock_waiters,
					    &qr->w);
					return 1;
				}
				op = q2_op_get(st, qr);
				if (!op)
					return 1;
				op->new_entry = ne;
				op->free_old = free_old;
				q2_op_start(op, QOP_ZERO, gc, 0, (uint32_t)n, 0,
					    &l2);
				qr->pos += n;
				continue;
			} else if (!wz) {
				qr->pos += n;
				continue;
			}
		}
		/*
		 * An operation on this cluster first, even when the cache
		 * already says "data": an allocating write puts its L2 entry
		 * in the cache before the entry's write completes, and a
		 * write acknowledged through that entry meanwhile would be
		 * lost if the worker died before the entry reached the file.
		 */
		if (q2_op_locked(st, gc)) {
			q2_wlist_add(&q2_op_locked(st, gc)->lock_waiters,
				     &qr->w);
			return 1;
		}
		if (c == CL_DATA && l2.copied) {
			n = q2_run_bytes(st, qr->pos, qr->end, &l2, c, slot,
					 true, Q2_SUB_IOV);
			rc = slice_sub(qr, &sub, qr->pos, n, zero_src);
			if (rc == 1)
				return 1;
			if (rc < 0)
				goto fail;
			sub->op = BKS_OP_WRITE;
			sub->offset = l2.host_offset + in;
			bks_join_add(&qr->join);
			bks_aioq_queue(s->q, s->img.fd, sub);
			qr->pos += n;
			continue;
		}
		op = q2_op_get(st, qr);
		if (!op)
			return 1;
		op->zero_src = zero_src;
		q2_op_start(op, QOP_ALLOC, gc, (uint32_t)in, (uint32_t)(in + n),
			    qr->pos - req->offset, &l2);
		qr->pos += n;
	}
	return 0;
fail:
	bks_join_add(&qr->join);
	bks_join_put(&qr->join, -EIO);
	qr->pos = qr->end;
	return 0;
}

/* A flush: 0 issued, 1 waiting. */
static int cursor_flush(struct qreq *qr)
{
	struct qcow2_state *st = qr->st;
	struct bks_req *sub;

	if (qr->end == 1) /* issued */
		return 0;
	sub = q2_sub_get(&st->s, &qr->w);
	if (!sub)
		return 1;
	((struct q2_sub *)bks_subreq_data(sub))->owner = qr;
	sub->op = BKS_OP_FLUSH;
	sub->done = piece_done;
	qr->pos = qr->end = 1;
	bks_join_add(&qr->join);
	bks_aioq_queue(st->s.q, st->s.img.fd, sub);
	return 0;
}

static void qreq_cursor(struct q2_wait *w, int result)
{
	struct qreq *qr = CONTAINER(w, struct qreq, w);
	int rc;

	if (result < 0) {
		/* What it waited for failed (a table load). */
		bks_join_add(&qr->join);
		bks_join_put(&qr->join, result);
		qr->pos = qr->end;
	}
	switch (qr->req->op) {
	case BKS_OP_READ:
		rc = cursor_read(qr);
		break;
	case BKS_OP_FLUSH:
		rc = cursor_flush(qr);
		break;
	case BKS_OP_BLOCK_STATUS:
		rc = cursor_block_status(qr);
		break;
	default:
		rc = cursor_write(qr);
		break;
	}
	if (rc == 0)
		bks_join_put(&qr->join, 0); /* the builder's */
}

void q2_req_submit(struct qcow2_state *st, struct bks_req *req)
{
	struct qreq *qr = st->free_qreqs;

	if (!qr) {
		req->owner_next = NULL;
		if (st->req_wait_tail)
			st->req_wait_tail->owner_next = req;
		else
			st->req_wait_head = req;
		st->req_wait_tail = req;
		return;
	}
	st->free_qreqs = qr->next_free;
	qr->req = req;
	qr->pos = req->offset;
	qr->end = req->offset + req->len;
	if (req->op == BKS_OP_BLOCK_STATUS) {
		req->nextents = 0;
		if (qr->end > st->s.h.size)
			qr->end = st->s.h.size;
	}
	st->backing = bks_layer_child(st->s.self, BKS_CHILD_BACKING);
	st->has_backing = st->s.h.has_backing && st->backing;
	st->backing_size =
	    st->has_backing ? bks_next_info(st->backing)->size : 0;
	qr->w.fn = qreq_cursor;
	bks_join_init(&qr->join, qreq_joined, qr);
	qreq_cursor(&qr->w, 0);
}
