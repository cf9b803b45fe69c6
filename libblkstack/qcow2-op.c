/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The qcow2: driver's operations on one guest cluster (see qcow2-int.h and
 * the ordering in drivers/qcow2.c): an allocating write (host cluster,
 * copy on write, data, L2 entry, new L2 table and L1 entry), a zeroing or
 * discard (the L2 entry, then the old cluster's refcount), a compressed
 * read (read, inflate on a helper thread, copy out).  Started by the
 * request cursors (qcow2-req.c); each completes into its request's join.
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/endian.h"
#include "blkstack/iov.h"
#include "qcow2-int.h"

/* ---- operations ---------------------------------------------------------- */

static void qop_step(struct q2_wait *w, int result);

struct qop *q2_op_locked(struct qcow2_state *st, uint64_t gc)
{
	for (unsigned int i = 0; i < st->nqops; i++)
		if (st->qops[i].active && st->qops[i].kind != QOP_CREAD &&
		    st->qops[i].gc == gc)
			return &st->qops[i];
	return NULL;
}

/* A free operation for qr, or NULL with qr's cursor queued. */
struct qop *q2_op_get(struct qcow2_state *st, struct qreq *qr)
{
	struct qop *op = st->free_qops;

	if (!op || st->qop_waiters.head) {
		q2_wlist_add(&st->qop_waiters, &qr->w);
		return NULL;
	}
	st->free_qops = op->next_free;
	op->active = true;
	op->qr = qr;
	op->result = 0;
	op->pending = 0;
	op->issued = 0;
	op->fill_started = false;
	op->cb = NULL;
	op->slot = NULL;
	op->free_old = false;
	op->creating = false;
	op->zero_src = false;
	op->fill = FILL_NONE;
	op->w.fn = qop_step;
	return op;
}

static void cbuf_put(struct qcow2_state *st, struct cbuf *cb)
{
	struct q2_wait *w = st->cbuf_waiters.head;

	cb->next = st->free_cbufs;
	st->free_cbufs = cb;
	if (w) {
		st->cbuf_waiters.head = w->next;
		if (!w->next)
			st->cbuf_waiters.tail = NULL;
		w->next = NULL;
		w->fn(w, 0);
	}
}

static void qop_finish(struct qop *op)
{
	struct qcow2_state *st = op->st;
	struct qreq *qr = op->qr;
	int result = op->result;

	if (op->cb) {
		cbuf_put(st, op->cb);
		op->cb = NULL;
	}
	op->active = false;
	op->next_free = st->free_qops;
	st->free_qops = op;
	q2_wlist_wake(&op->lock_waiters, 0);
	q2_wlist_wake(&st->qop_waiters, 0);
	bks_join_put(&qr->join, result);
}

static void qop_fail(struct qop *op, int result)
{
	if (op->result == 0)
		op->result = result;
	qop_finish(op);
}

static void fill_done(struct bks_req *sub, int result)
{
	struct q2_sub *d = bks_subreq_data(sub);
	struct qop *op = d->owner;

	q2_sub_put(&op->st->s, sub);
	if (result < 0 && op->result == 0)
		op->result = result;
	if (--op->pending == 0)
		qop_step(&op->w, 0);
}

/* Read [off, off + len) of the backing child (or of our file, from_fd)
 * into buf; beyond the backing's end, zeroes.  0 issued (or nothing to
 * do), 1 waiting for a sub-request. */
static int fill_read(struct qop *op, unsigned int part, bool from_fd,
		     uint64_t off, unsigned char *buf, uint64_t len)
{
	struct qcow2_state *st = op->st;
	struct bks_req *sub;
	struct q2_sub *d;

	if (op->issued & part)
		return 0;
	if (from_fd) {
		uint64_t end = st->s.read_end;

		if (off + len > end) {
			uint64_t keep = off < end ? end - off : 0;

			memset(buf + keep, 0, len - keep);
			len = keep;
		}
		if (len == 0) {
			op->issued |= part;
			return 0;
		}
	} else {
		if (off >= st->backing_size) {
			memset(buf, 0, len);
			op->issued |= part;
			return 0;
		}
		if (off + len > st->backing_size) {
			uint64_t keep = st->backing_size - off;

			memset(buf + keep, 0, len - keep);
			len = keep;
		}
	}
	sub = q2_sub_get(&st->s, &op->w);
	if (!sub)
		return 1;
	d = bks_subreq_data(sub);
	d->owner = op;
	d->iov[0].iov_base = buf;
	d->iov[0].iov_len = len;
	sub->op = BKS_OP_READ;
	sub->offset = off;
	sub->len = len;
	sub->iov = d->iov;
	sub->iovcnt = 1;
	sub->done = fill_done;
	op->pending++;
	op->issued |= part;
	if (from_fd)
		bks_aioq_queue(st->s.q, st->s.img.fd, sub);
	else
		bks_next_submit(st->backing, sub);
	return 0;
}

/* On a helper thread: inflate cb's input into its output (a cluster). */
static int inflate_run(struct bks_offload_job *job)
{
	struct cbuf *cb = job->opaque;
	size_t cs = cb->cs;

	if (cb->zstd) {
		ZSTD_inBuffer ib = {cb->in, cb->n, 0};
		ZSTD_outBuffer ob = {cb->out, cs, 0};

		ZSTD_DCtx_reset(cb->zd, ZSTD_reset_session_only);
		while (ob.pos < cs) {
			size_t r = ZSTD_decompressStream(cb->zd, &ob, &ib);

			if (ZSTD_isError(r))
				return -EIO;
			if (ob.pos == cs)
				break;
			/* The frame ended, or the input did, short. */
			if (r == 0 || ib.pos == ib.size)
				return -EIO;
		}
		return 0;
	}
	if (inflateReset(&cb->zs) != Z_OK)
		return -EIO;
	cb->zs.next_in = (unsigned char *)cb->in;
	cb->zs.avail_in = (uInt)cb->n;
	cb->zs.next_out = cb->out;
	cb->zs.avail_out = (uInt)cs;
	{
		int r = inflate(&cb->zs, Z_FINISH);

		/* Trailing bytes of the last sector are not deflate data. */
		if ((r != Z_STREAM_END && r != Z_BUF_ERROR) ||
		    cb->zs.avail_out != 0)
			return -EIO;
	}
	return 0;
}

static void qop_step(struct q2_wait *w, int result);

/* On the loop: the inflate is done. */
static void inflate_done(struct bks_offload_job *job, int result)
{
	struct cbuf *cb = job->opaque;
	struct qop *op = cb->op;

	if (result < 0) {
		op->st->inflate_errors++;
		if (op->result == 0)
			op->result = result;
	}
	op->step = S_INFLATED;
	qop_step(&op->w, 0);
}

/* The compressed cluster of op->old: 0 read issued, 1 waiting. */
static int fill_compressed(struct qop *op)
{
	struct qcow2_state *st = op->st;
	struct q2 *s = &st->s;
	uint64_t start, stop;

	if (!op->cb) {
		op->cb = st->free_cbufs;
		if (!op->cb) {
			q2_wlist_add(&st->cbuf_waiters, &op->w);
			return 1;
		}
		st->free_cbufs = op->cb->next;
	}
	start = op->old.host_offset & ~(uint64_t)(s->block_size - 1);
	stop = (op->old.host_offset + op->old.csize + s->block_size - 1) &
	       ~(uint64_t)(s->block_size - 1);
	if (stop > s->read_end)
		stop = s->read_end;
	return fill_read(op, 4, true, start, op->cb->buf, stop - start);
}

/* Inflate the compressed bytes read into op->cb, into op->buf, on a
 * helper thread: 0 submitted (inflate_done resumes), or -errno. */
static int compressed_inflate(struct qop *op)
{
	struct qcow2_state *st = op->st;
	struct q2 *s = &st->s;
	struct cbuf *cb = op->cb;
	uint64_t start = op->old.host_offset & ~(uint64_t)(s->block_size - 1);
	uint64_t skip = op->old.host_offset - start;
	uint64_t stop =
	    (op->old.host_offset + op->old.csize + s->block_size - 1) &
	    ~(uint64_t)(s->block_size - 1);

	if (stop > s->read_end)
		stop = s->read_end;
	if (stop <= start + skip)
		return -EIO;
	s->st.compressed_reads++;
	cb->in = cb->buf + skip;
	cb->n = stop - start - skip;
	cb->out = op->buf;
	cb->cs = s->g.cluster_size;
	cb->zstd = s->h.compression_type == BKS_QCOW2_COMPRESSION_ZSTD;
	cb->op = op;
	cb->job.fn = inflate_run;
	cb->job.done = inflate_done;
	cb->job.opaque = cb;
	return bks_offload_submit(s->off, &cb->job);
}

static void qop_write_done(struct bks_req *sub, int result)
{
	struct q2_sub *d = bks_subreq_data(sub);
	struct qop *op = d->owner;

	q2_sub_put(&op->st->s, sub);
	if (result < 0) {
		qop_fail(op, result);
		return;
	}
	op->step = S_L2;
	qop_step(&op->w, 0);
}

/* The cluster's data: 0 issued, 1 waiting, -errno. */
static int qop_write(struct qop *op)
{
	struct qcow2_state *st = op->st;
	struct q2 *s = &st->s;
	uint64_t cs = s->g.cluster_size;
	struct bks_req *sub = q2_sub_get(s, &op->w);
	struct q2_sub *d;
	int cnt = 0, rc = 0;

	if (!sub)
		return 1;
	d = bks_subreq_data(sub);
	d->owner = op;
	sub->op = BKS_OP_WRITE;
	sub->done = qop_write_done;
	sub->iov = d->iov;
	if (op->fill == FILL_NONE) {
		sub->offset = op->host + op->a;
		sub->len = op->b - op->a;
	} else {
		unsigned char *src = op->fill == FILL_ZERO ? st->zero : op->buf;

		sub->offset = op->host;
		sub->len = cs;
		s->st.cow_bytes += cs - (op->b - op->a);
		if (op->a) {
			d->iov[cnt].iov_base = src;
			d->iov[cnt++].iov_len = op->a;
		}
	}
	if (op->zero_src) {
		d->iov[cnt].iov_base = st->zero;
		d->iov[cnt++].iov_len = op->b - op->a;
	} else {
		rc = bks_iov_slice(op->qr->req, op->skip, op->b - op->a, d->iov,
				   &cnt, Q2_SUB_IOV - 1);
	}
	if (rc < 0) {
		/* Too many buffers: copy the guest's bytes into ours. */
		if (op->fill == FILL_ZERO)
			memset(op->buf, 0, cs);
		bks_iov_to_buf(op->qr->req, op->skip, op->buf + op->a,
			       op->b - op->a);
		if (op->fill == FILL_NONE) {
			d->iov[0].iov_base = op->buf + op->a;
			d->iov[0].iov_len = op->b - op->a;
		} else {
			d->iov[0].iov_base = op->buf;
			d->iov[0].iov_len = cs;
		}
		cnt = 1;
	} else if (op->fill != FILL_NONE && op->b < cs) {
		unsigned char *src = op->fill == FILL_ZERO ? st->zero : op->buf;

		d->iov[cnt].iov_base = src + op->b;
		d->iov[cnt++].iov_len = cs - op->b;
	}
	sub->iovcnt = cnt;
	bks_aioq_queue(s->q, s->img.fd, sub);
	return 0;
}

/* What fills the rest of the cluster, and the reads it needs. */
static int qop_fill(struct qop *op)
{
	struct qcow2_state *st = op->st;
	uint64_t cs = st->s.g.cluster_size;
	uint64_t gstart = op->gc << st->s.g.cluster_bits;
	int rc = 0;

	if (op->a == 0 && op->b == cs) {
		op->fill = FILL_NONE; /* every byte is written */
		return 0;
	}
	switch (op->old.type) {
	case BKS_QCOW2_UNALLOCATED:
		if (!st->has_backing) {
			op->fill = FILL_NONE;
			return 0;
		}
		op->fill = FILL_BUF;
		/* Head and tail from the backing file. */
		if (op->a)
			rc = fill_read(op, 1, false, gstart, op->buf, op->a);
		if (rc == 0 && op->b < cs)
			rc = fill_read(op, 2, false, gstart + op->b,
				       op->buf + op->b, cs - op->b);
		return rc;
	case BKS_QCOW2_ZERO_PLAIN:
		op->fill = FILL_NONE;
		return 0;
	case BKS_QCOW2_ZERO_ALLOC:
		op->fill =
		    op->host == op->old.host_offset ? FILL_ZERO : FILL_NONE;
		return 0;
	case BKS_QCOW2_COMPRESSED:
		op->fill = FILL_BUF;
		return fill_compressed(op);
	case BKS_QCOW2_NORMAL:
		op->fill = FILL_BUF;
		return fill_read(op, 4, true, op->old.host_offset, op->buf, cs);
	}
	return -EIO;
}

static void l1_written(struct q2_wait *w, int result);

/* Entry write or new table: the L2 step.  0 issued, 1 waiting, -errno. */
static int qop_l2(struct qop *op)
{
	struct qcow2_state *st = op->st;
	struct q2 *s = &st->s;
	const struct bks_qcow2_geom *g = &s->g;
	uint64_t gpos = op->gc << g->cluster_bits;
	uint64_t l2i = bks_qcow2_l2_index(g, gpos);
	struct bks_qcow2_l2 l2;
	struct q2_slot *slot;
	int rc;

	op->l1i = bks_qcow2_l1_index(g, gpos);
	rc = q2_lookup(st, gpos, &op->w, &l2, &slot);
	if (rc != 0)
		return rc;
	if (!slot && op->new_entry == 0) {
		op->step = S_L2_WRITTEN; /* reads as zeroes already */
		return 2;
	}
	if (!slot) {
		/* No L2 table yet: make one. */
		op->creating = true;
		op->step = S_L2_NEW;
		return 2;
	}
	bks_put_be64(slot->buf + 8 * l2i, op->new_entry);
	op->step = S_L2_WRITTEN;
	q2_mw_write(&slot->mw, (uint32_t)(8 * l2i), 8, &op->w);
	return 0;
}

/* A new L2 table failed: the L1 entry is empty again. */
static void l2_new_fail(struct qop *op, int result)
{
	struct qcow2_state *st = op->st;

	op->creating = false;
	if (op->slot) {
		q2_cache_created(&st->s, op->slot, result);
		op->slot = NULL;
	}
	q2_wlist_wake(&st->l1_waiters, 0);
	qop_fail(op, result);
}

static void l1_written(struct q2_wait *w, int result)
{
	struct qop *op = CONTAINER(w, struct qop, w);
	struct qcow2_state *st = op->st;

	if (result < 0) {
		l2_new_fail(op, result);
		return;
	}
	st->s.st.l2_allocated++;
	op->creating = false;
	q2_cache_created(&st->s, op->slot, 0);
	op->slot = NULL;
	op->w.fn = qop_step;
	op->step = S_L2_WRITTEN;
	q2_wlist_wake(&st->l1_waiters, 0);
	qop_step(&op->w, 0);
}

static void qop_step(struct q2_wait *w, int result)
{
	struct qop *op = CONTAINER(w, struct qop, w);
	struct qcow2_state *st = op->st;
	struct q2 *s = &st->s;
	const struct bks_qcow2_geom *g = &s->g;
	int rc;

	if (result < 0) {
		if (op->step == S_L2_NEW || op->step == S_L2_TABLE ||
		    op->step == S_L2_LINK)
			l2_new_fail(op, result);
		else
			qop_fail(op, result);
		return;
	}
	for (;;) {
		switch (op->step) {
		case S_HOST:
			if (op->kind == QOP_ZERO) {
				op->step = S_L2;
				continue;
			}
			if (op->kind == QOP_ALLOC &&
			    op->old.type == BKS_QCOW2_ZERO_ALLOC &&
			    op->old.copied) {
				op->host = op->old.host_offset;
			} else if (op->kind == QOP_ALLOC) {
				rc = q2_alloc_cluster(s, &op->w, &op->host);
				if (rc == 1)
					return;
				if (rc < 0) {
					qop_fail(op, rc);
					return;
				}
			}
			op->new_entry = bks_qcow2_l2_make(op->host, true);
			op->step = S_FILL;
			continue;
		case S_FILL:
			if (!op->fill_started) {
				op->fill_started = true;
				op->pending = 1; /* ours, while issuing */
			}
			if (op->kind == QOP_CREAD)
				rc = fill_compressed(op);
			else
				rc = qop_fill(op);
			if (rc == 1)
				return;
			if (rc < 0)
				op->result = rc;
			op->step = S_FILL_WAIT;
			if (--op->pending)
				return; /* fill_done resumes */
			continue;
		case S_FILL_WAIT:
			if (op->result < 0) {
				qop_fail(op, op->result);
				return;
			}
			if (op->cb) {
				rc = compressed_inflate(op);
				if (rc < 0) {
					qop_fail(op, rc);
					return;
				}
				return; /* inflate_done resumes */
			}
			/* fall through */
		case S_INFLATED:
			if (op->cb) {
				cbuf_put(st, op->cb);
				op->cb = NULL;
			}
			if (op->result < 0) {
				qop_fail(op, op->result);
				return;
			}
			if (op->kind == QOP_CREAD) {
				bks_iov_from_buf(op->qr->req, op->skip,
						 op->buf + op->a,
						 op->b - op->a);
				qop_finish(op);
				return;
			}
			op->step = S_WRITE;
			continue;
		case S_WRITE:
			rc = qop_write(op);
			if (rc == 1)
				return;
			if (rc < 0) {
				qop_fail(op, rc);
				return;
			}
			return; /* qop_write_done resumes at S_L2 */
		case S_L2:
			rc = qop_l2(op);
			if (rc == 1)
				return;
			if (rc < 0) {
				qop_fail(op, rc);
				return;
			}
			if (rc == 2)
				continue; /* S_L2_NEW, or nothing to write */
			return;		  /* the entry's write resumes */
		case S_L2_NEW:
			rc = q2_alloc_cluster(s, &op->w, &op->l2_host);
			if (rc == 1)
				return;
			if (rc < 0) {
				l2_new_fail(op, rc);
				return;
			}
			op->step = S_L2_TABLE;
			continue;
		case S_L2_TABLE: {
			struct q2_slot *slot;
			uint64_t l2i =
			    bks_qcow2_l2_index(g, op->gc << g->cluster_bits);

			rc = q2_cache_create(s, op->l2_host, &op->w, &slot);
			if (rc == 1)
				return;
			op->slot = slot;
			bks_put_be64(slot->buf + 8 * l2i, op->new_entry);
			op->step = S_L2_LINK;
			q2_mw_write(&slot->mw, 0, (uint32_t)g->cluster_size,
				    &op->w);
			return;
		}
		case S_L2_LINK:
			/* The table is on disk: point the L1 entry at it. */
			bks_put_be64(s->l1 + 8 * op->l1i,
				     bks_qcow2_l1_make(op->slot->off));
			op->w.fn = l1_written;
			q2_mw_write(&s->l1_mw, (uint32_t)(8 * op->l1i), 8,
				    &op->w);
			return;
		case S_L2_WRITTEN:
			if (op->kind == QOP_ZERO)
				s->st.zero_clusters++;
			op->step = S_UNREF;
			if (op->free1) {
				q2_unref(s, &op->unref, op->free1, &op->w);
				return;
			}
			continue;
		case S_UNREF:
			op->step = S_FINISH;
			if (op->free2) {
				q2_unref(s, &op->unref, op->free2, &op->w);
				return;
			}
			continue;
		case S_FINISH:
			qop_finish(op);
			return;
		}
	}
}

/* Start op on guest cluster gc for qr. */
void q2_op_start(struct qop *op, enum qop_kind kind, uint64_t gc, uint32_t a,
		 uint32_t b, uint64_t skip, const struct bks_qcow2_l2 *old)
{
	op->kind = kind;
	op->gc = gc;
	op->a = a;
	op->b = b;
	op->skip = skip;
	op->old = *old;
	op->step = kind == QOP_CREAD ? S_FILL : S_HOST;
	op->free1 = op->free2 = 0;
	if (kind != QOP_CREAD && old->type == BKS_QCOW2_COMPRESSED) {
		/* The host clusters its sectors touch, as qemu counts them. */
		uint64_t cs = op->st->s.g.cluster_size;
		uint64_t start = old->host_offset & ~511ull;
		uint64_t last =
		    start + old->csize + (old->host_offset & 511) - 1;

		op->free1 = start & ~(cs - 1);
		if ((last & ~(cs - 1)) != op->free1)
			op->free2 = last & ~(cs - 1);
	} else if (op->free_old) {
		op->free1 = old->host_offset;
	}
	bks_join_add(&op->qr->join);
	qop_step(&op->w, 0);
}
