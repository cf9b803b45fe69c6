/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * qcow2:PATH -- a sink on a qcow2 image (versions 2 and 3), with its
 * backing file as its parent (BKS_CHILD_BACKING).
 *
 * The file is opened with O_DIRECT and served through one bks_aioq: guest
 * data and metadata alike (metadata through aligned buffers).  The format
 * is libblkstack/qcow2-format.c; the metadata cache and writer are
 * qcow2-cache.c; cluster allocation and refcounts qcow2-alloc.c.  See
 * docs/chains.txt "qcow2:" for what is supported and refused.
 *
 * A guest request gets a context (struct qreq, a fixed pool) whose cursor
 * walks its range cluster by cluster: it looks the cluster up (L1 in
 * memory, the L2 table from the cache, waiting for a load without
 * blocking), and issues a piece for each run of clusters of one kind --
 * allocated data straight through the aioq, zeroes copied in, unallocated
 * ranges read from the backing child -- under a join that completes the
 * request.  Writes to allocated clusters (copied flag set) go straight
 * through.  Everything that changes metadata for one guest cluster is an
 * operation (struct qop, a fixed pool): an allocating write, a zeroing or
 * discard, or a compressed read.  Operations on one guest cluster are
 * serialised (a second waits for the first); operations on different
 * clusters run concurrently.
 *
 * An allocating write, in order:
 *   1. a host cluster: the preallocated one of a zero cluster, or a fresh
 *      one from the reservation (qcow2-alloc.c: its refcount is already
 *      1 on disk and synced);
 *   2. the cluster's data written: the guest's bytes, and for the rest of
 *      the cluster the backing file's bytes (copy on write), the old
 *      cluster's (compressed: inflated), or zeroes (a fresh cluster is a
 *      hole that reads as zeroes: only the guest's bytes are written);
 *   3. after that write completed, the L2 entry is written (one block of
 *      the cached table); a new L2 table is written whole, then its L1
 *      entry;
 *   4. after those writes completed, the guest's request is completed.
 * Each step is issued only when the one before has completed, so after
 * the process dies at any point the file holds a prefix of this sequence:
 * a cluster counted but not referenced (a leak), or data no L2 entry
 * points at yet (the write was not acknowledged), never an entry pointing
 * at unwritten data or at a cluster whose refcount is 0.  For power loss,
 * the reservation's fdatasync keeps refcounts ahead of their use; a
 * guest's flush (fdatasync) makes everything completed before it durable,
 * metadata included, as NBD asks; a FUA write is followed by one.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../qcow2-int.h"
#include "blkstack/endian.h"
#include "blkstack/iov.h"

#define QCOW2_USAGE "qcow2:PATH (a qcow2 image, version 2 or 3)"

#define Q2_QUEUE_DEPTH 128u
#define Q2_SUBREQS     1024u
#define Q2_QREQS       256u
#define Q2_CBUFS       4u
/* Helper threads: ftruncate, inflate, fdatasync where there is no aio
 * fdsync. */
#define Q2_THREADS	 2u
#define Q2_CLOSE_WAIT_NS (5ull * 1000 * 1000 * 1000)

struct qcow2_state;

/* A guest request's context. */
struct qreq {
	struct q2_wait w; /* the cursor, resumed */
	struct qcow2_state *st;
	struct bks_req *req;
	uint64_t pos, end;
	struct bks_join join;
	bool fua_flush; /* the flush after a FUA write */
	struct qreq *next_free;
};

enum qop_kind {
	QOP_ALLOC,
	QOP_ZERO,
	QOP_CREAD
};

enum qop_fill {
	FILL_NONE, /* a fresh cluster: only the guest's bytes */
	FILL_ZERO, /* the rest from the zero buffer */
	FILL_BUF,  /* the rest from buf (backing, old, inflated) */
};

enum qop_step {
	S_HOST,
	S_FILL,
	S_FILL_WAIT,
	S_INFLATED,
	S_WRITE,
	S_L2,
	S_L2_NEW,
	S_L2_TABLE,
	S_L2_LINK,
	S_L2_WRITTEN,
	S_UNREF,
	S_FINISH,
};

/* A compressed read's buffer, with its own inflate contexts: inflating
 * runs on a helper thread (a 64 KiB cluster takes 0.1-0.2 ms of CPU, too
 * long to hold the loop). */
struct cbuf {
	unsigned char *buf;
	struct cbuf *next;
	z_stream zs;
	bool zs_ok;
	ZSTD_DCtx *zd;
	struct bks_offload_job job;
	const unsigned char *in; /* the job's input, n bytes, and output */
	size_t n, cs;
	unsigned char *out;
	bool zstd;
	struct qop *op;
};

/* One operation on one guest cluster. */
struct qop {
	struct q2_wait w;
	struct qcow2_state *st;
	struct qreq *qr;
	enum qop_kind kind;
	enum qop_step step;
	bool active;
	uint64_t gc;		 /* guest cluster index */
	uint32_t a, b;		 /* the guest's bytes in the cluster */
	uint64_t skip;		 /* their place in the request's buffers */
	bool zero_src;		 /* the guest's bytes are zeroes */
	struct bks_qcow2_l2 old; /* the entry before */
	uint64_t new_entry;
	bool creating;	       /* making the L2 table of L1 entry l1i */
	bool free_old;	       /* lower the old cluster's refcount after */
	uint64_t free1, free2; /* those clusters (0: none) */
	uint64_t host;	       /* the cluster written */
	enum qop_fill fill;
	unsigned int pending; /* reads in flight for the fill, +1 issuing */
	unsigned int issued;  /* parts of the fill issued (bits) */
	bool fill_started;
	uint64_t l2_host; /* a new L2 table's cluster */
	int result;
	unsigned char *buf; /* one cluster */
	struct cbuf *cb;
	struct q2_slot *slot; /* a new L2 table */
	uint64_t l1i;
	struct q2_unref unref;
	struct q2_wlist lock_waiters;
	struct qop *next_free;
};

struct qcow2_state {
	struct q2 s; /* first: the parts' state */
	struct bks_layer *backing;
	uint64_t backing_size;
	char *parent_path;
	bool parent_qcow2;
	bool has_backing;
	unsigned char *zero; /* one cluster of zeroes */
	struct qreq qreqs[Q2_QREQS];
	struct qreq *free_qreqs;
	struct bks_req *req_wait_head, *req_wait_tail;
	struct qop *qops;
	unsigned int nqops;
	unsigned char *qop_mem;
	struct qop *free_qops;
	struct q2_wlist qop_waiters;
	struct cbuf cbufs[Q2_CBUFS];
	unsigned char *cbuf_mem;
	size_t cbuf_size;
	struct cbuf *free_cbufs;
	struct q2_wlist cbuf_waiters;
	struct q2_wlist l1_waiters;
	uint64_t inflate_errors, bad_entries;
	char last_error[BKS_ERROR_MSG_MAX];
};

#define CONTAINER(ptr, type, member)                                           \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- lookups ------------------------------------------------------------- */

/* Classes of a guest cluster for the cursors. */
enum cls {
	CL_DATA,       /* allocated: read at host */
	CL_ZERO,       /* reads as zeroes, from this image (zero flag) */
	CL_HOLE,       /* unallocated, no backing: zeroes */
	CL_BACKING,    /* unallocated: the backing file */
	CL_COMPRESSED, /* compressed */
};

/*
 * A bad entry met on the data path: the request fails with -EIO, and the
 * message (file, table, entry, value) is kept for the stats ("last_error")
 * and counted.
 */
static int bad_entry(struct qcow2_state *st, const struct bks_error *e,
		     const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static int bad_entry(struct qcow2_state *st, const struct bks_error *e,
		     const char *fmt, ...)
{
	struct bks_error tmp = {0};
	char where[128];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(where, sizeof(where), fmt, ap);
	va_end(ap);
	/* Shortened in the middle if need be, as error messages are. */
	bks_error_setmsg(&tmp, EIO, "%s: %s: %s", st->s.path, where, e->msg);
	memcpy(st->last_error, tmp.msg, sizeof(st->last_error));
	st->bad_entries++;
	return -EIO;
}

/*
 * The L2 entry of the cluster at guest offset pos: 0 with *l2 (and *slot,
 * NULL if the L1 entry is empty); 1 with w queued; -EIO on a bad entry.
 */
static int lookup(struct qcow2_state *st, uint64_t pos, struct q2_wait *w,
		  struct bks_qcow2_l2 *l2, struct q2_slot **slotp)
{
	struct q2 *s = &st->s;
	const struct bks_qcow2_geom *g = &s->g;
	struct bks_error err = {0};
	uint64_t l1i = bks_qcow2_l1_index(g, pos), e1, l2off;
	struct q2_slot *slot;
	bool copied;
	int rc;

	memset(l2, 0, sizeof(*l2));
	*slotp = NULL;
	if (l1i >= s->h.l1_size)
		return -EIO;
	e1 = bks_get_be64(s->l1 + 8 * l1i);
	if (bks_qcow2_l1_decode(g, e1, &l2off, &copied, &err) < 0)
		return bad_entry(st, &err, "L1 entry %llu",
				 (unsigned long long)l1i);
	if (l2off == 0) {
		/* Its first L2 table may be on its way: wait for it.  (Never
		 * marked in the L1 table itself, which any write of its
		 * block would carry to disk.) */
		for (unsigned int i = 0; i < st->nqops; i++)
			if (st->qops[i].active && st->qops[i].creating &&
			    st->qops[i].l1i == l1i) {
				q2_wlist_add(&st->l1_waiters, w);
				return 1;
			}
		return 0;
	}
	rc = q2_cache_get(s, l2off, w, &slot);
	if (rc != 0)
		return rc;
	if (bks_qcow2_l2_decode(
		g, bks_get_be64(slot->buf + 8 * bks_qcow2_l2_index(g, pos)), l2,
		&err) < 0 ||
	    bks_qcow2_l2_check_bounds(g, l2, s->file_size, &err) < 0)
		return bad_entry(
		    st, &err, "L2 table at 0x%llx, entry %llu",
		    (unsigned long long)l2off,
		    (unsigned long long)bks_qcow2_l2_index(g, pos));
	*slotp = slot;
	return 0;
}

static enum cls classify(const struct qcow2_state *st,
			 const struct bks_qcow2_l2 *l2)
{
	switch (l2->type) {
	case BKS_QCOW2_NORMAL:
		return CL_DATA;
	case BKS_QCOW2_COMPRESSED:
		return CL_COMPRESSED;
	case BKS_QCOW2_ZERO_PLAIN:
	case BKS_QCOW2_ZERO_ALLOC:
		return CL_ZERO;
	default:
		return st->has_backing ? CL_BACKING : CL_HOLE;
	}
}

/*
 * How many clusters from pos (whose entry is first, class c) continue the
 * run in the same L2 table (slot; NULL: all unallocated), up to end, at
 * most max: allocated ones contiguous on the host.  Returns the bytes of
 * the run from pos.
 */
static uint64_t run_bytes(struct qcow2_state *st, uint64_t pos, uint64_t end,
			  const struct bks_qcow2_l2 *first, enum cls c,
			  struct q2_slot *slot, bool direct_only, unsigned max)
{
	struct q2 *s = &st->s;
	const struct bks_qcow2_geom *g = &s->g;
	uint64_t cs = g->cluster_size;
	uint64_t cstart = pos & ~(cs - 1);
	uint64_t table_end =
	    (cstart | (((uint64_t)g->l2_entries << g->cluster_bits) - 1)) + 1;
	uint64_t p = cstart + cs;
	unsigned n = 1;

	if (c == CL_COMPRESSED)
		return (cstart + cs < end ? cstart + cs : end) - pos;
	while (p < end && p < table_end && n < max) {
		struct bks_qcow2_l2 l2;
		struct bks_error err = {0};

		if (slot) {
			if (bks_qcow2_l2_decode(
				g,
				bks_get_be64(slot->buf +
					     8 * bks_qcow2_l2_index(g, p)),
				&l2, &err) < 0 ||
			    bks_qcow2_l2_check_bounds(g, &l2, s->file_size,
						      &err) < 0)
				break;
		} else {
			memset(&l2, 0, sizeof(l2));
		}
		if (classify(st, &l2) != c)
			break;
		if (c == CL_DATA &&
		    (l2.host_offset != first->host_offset + n * cs ||
		     (direct_only && !l2.copied)))
			break;
		p += cs;
		n++;
	}
	return (p < end ? p : end) - pos;
}

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

/* ---- operations ---------------------------------------------------------- */

static void qop_step(struct q2_wait *w, int result);

static struct qop *qop_locked(struct qcow2_state *st, uint64_t gc)
{
	for (unsigned int i = 0; i < st->nqops; i++)
		if (st->qops[i].active && st->qops[i].kind != QOP_CREAD &&
		    st->qops[i].gc == gc)
			return &st->qops[i];
	return NULL;
}

/* A free operation for qr, or NULL with qr's cursor queued. */
static struct qop *qop_get(struct qcow2_state *st, struct qreq *qr)
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
	rc = lookup(st, gpos, &op->w, &l2, &slot);
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
static void qop_start(struct qop *op, enum qop_kind kind, uint64_t gc,
		      uint32_t a, uint32_t b, uint64_t skip,
		      const struct bks_qcow2_l2 *old)
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

/* ---- requests ------------------------------------------------------------ */

static void qreq_start(struct qcow2_state *st, struct bks_req *req);

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
		qreq_start(st, next);
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
		int rc = lookup(st, qr->pos, &qr->w, &l2, &slot);

		if (rc == 1)
			return 1;
		if (rc < 0) {
			qr->join.result =
			    qr->join.result ? qr->join.result : rc;
			return 0;
		}
		c = classify(st, &l2);
		n = run_bytes(st, qr->pos, qr->end, &l2, c, slot, false,
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
		int rc = lookup(st, qr->pos, &qr->w, &l2, &slot);

		if (rc == 1)
			return 1;
		if (rc < 0)
			goto fail;
		c = classify(st, &l2);
		n = run_bytes(st, qr->pos, qr->end, &l2, c, slot, false,
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
			struct qop *op = qop_get(st, qr);

			if (!op)
				return 1;
			qop_start(op, QOP_CREAD, qr->pos >> g->cluster_bits,
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
		int rc = lookup(st, qr->pos, &qr->w, &l2, &slot);

		if (rc == 1)
			return 1;
		if (rc < 0)
			goto fail;
		c = classify(st, &l2);
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
				if (qop_locked(st, gc)) {
					q2_wlist_add(
					    &qop_locked(st, gc)->lock_waiters,
					    &qr->w);
					return 1;
				}
				op = qop_get(st, qr);
				if (!op)
					return 1;
				op->new_entry = ne;
				op->free_old = free_old;
				qop_start(op, QOP_ZERO, gc, 0, (uint32_t)n, 0,
					  &l2);
				qr->pos += n;
				continue;
			} else if (!wz) {
				qr->pos += n;
				continue;
			}
		}
		if (c == CL_DATA && l2.copied) {
			n = run_bytes(st, qr->pos, qr->end, &l2, c, slot, true,
				      Q2_SUB_IOV);
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
		if (qop_locked(st, gc)) {
			q2_wlist_add(&qop_locked(st, gc)->lock_waiters, &qr->w);
			return 1;
		}
		op = qop_get(st, qr);
		if (!op)
			return 1;
		op->zero_src = zero_src;
		qop_start(op, QOP_ALLOC, gc, (uint32_t)in, (uint32_t)(in + n),
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

static void qreq_start(struct qcow2_state *st, struct bks_req *req)
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

static int qcow2_submit(void *state, struct bks_layer *self,
			struct bks_req *req)
{
	(void)self;
	qreq_start(state, req);
	return 0;
}

/* ---- open, close, info --------------------------------------------------- */

static bool power_of_two(uint32_t v)
{
	return v && !(v & (v - 1));
}

static int read_at(struct q2 *s, void *buf, size_t len, uint64_t off,
		   const char *what, struct bks_error *err)
{
	/* len is whole blocks; the file may end inside the last. */
	uint64_t want = off >= s->file_size	   ? 0
			: s->file_size - off < len ? s->file_size - off
						   : len;
	ssize_t n = want ? pread(s->img.fd, buf, len, (off_t)off) : 0;

	if (n < 0)
		return bks_error_set(err, errno, "%s: reading the %s", s->path,
				     what);
	if ((uint64_t)n < want)
		return bks_error_setmsg(
		    err, EIO, "%s: reading the %s: %zd of %llu bytes", s->path,
		    what, n, (unsigned long long)want);
	memset((char *)buf + n, 0, len - (size_t)n);
	return 0;
}

static int alloc_aligned(struct q2 *s, unsigned char **p, size_t len,
			 struct bks_error *err)
{
	if (posix_memalign((void **)p, 4096, len ? len : 4096) != 0) {
		*p = NULL;
		return bks_error_set(err, ENOMEM, "%s: %zu bytes", s->path,
				     len);
	}
	memset(*p, 0, len);
	return 0;
}

static int open_header(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	uint64_t up =
	    (s->img.size + s->block_size - 1) & ~(uint64_t)(s->block_size - 1);
	size_t want = up < (2u << 20) ? (size_t)up : (2u << 20);
	size_t have = s->img.size < want ? (size_t)s->img.size : want;
	unsigned char *buf = NULL;
	int rc;

	rc = alloc_aligned(s, &buf, want, err);
	if (rc == 0)
		rc = read_at(s, buf, want, 0, "header", err);
	if (rc == 0)
		rc = bks_qcow2_header_parse(buf, have, s->img.size, &s->h, err);
	if (rc < 0 && err->code && !strstr(err->msg, s->path))
		bks_error_prepend(err, "%s: ", s->path);
	free(buf);
	return rc;
}

/*
 * Bytes of refcount table the image can come to need (every cluster it
 * has now, and every data cluster, L2 table and refcount block it can
 * get, counted, and room to move the table), at least what it has, at
 * most the format's limit: the table is allocated at that size at open,
 * so that growing it allocates nothing on the data path.
 */
static uint32_t reftable_cap(const struct q2 *s)
{
	const struct bks_qcow2_geom *g = &s->g;
	uint64_t cs = g->cluster_size;
	uint64_t data = (s->h.size + cs - 1) / cs;
	uint64_t total = (s->file_size + cs - 1) / cs + data +
			 (data + g->l2_entries - 1) / g->l2_entries +
			 ((uint64_t)s->h.l1_size * 8 + cs - 1) / cs + 64;
	uint64_t rb = (total + g->rb_entries - 1) / g->rb_entries;
	uint64_t cap = ((2 * rb + 64) * 8 + cs - 1) & ~(cs - 1);

	if (cap > BKS_QCOW2_MAX_REFTABLE_BYTES)
		cap = BKS_QCOW2_MAX_REFTABLE_BYTES & ~(cs - 1);
	if (cap < s->rt_bytes)
		cap = s->rt_bytes;
	return (uint32_t)cap;
}

static int open_tables(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	uint32_t bs = s->block_size;
	int rc;

	s->l1_bytes = ((uint32_t)s->h.l1_size * 8 + bs - 1) & ~(bs - 1);
	if (s->l1_bytes == 0)
		s->l1_bytes = bs;
	if (s->h.l1_table_offset + (uint64_t)s->h.l1_size * 8 > s->file_size)
		return bks_error_setmsg(
		    err, EINVAL,
		    "%s: qcow2 header: L1 table at 0x%llx "
		    "is past the end of the file",
		    s->path, (unsigned long long)s->h.l1_table_offset);
	rc = alloc_aligned(s, &s->l1, s->l1_bytes, err);
	if (rc == 0)
		rc = read_at(s, s->l1, s->l1_bytes, s->h.l1_table_offset,
			     "L1 table", err);
	if (rc < 0)
		return rc;
	s->rt_bytes = s->h.refcount_table_clusters << s->h.cluster_bits;
	s->rt_entries = s->rt_bytes / 8;
	s->rt_cap = reftable_cap(s);
	rc = alloc_aligned(s, &s->rt, s->rt_cap, err);
	if (rc == 0)
		rc = read_at(s, s->rt, s->rt_bytes, s->h.refcount_table_offset,
			     "refcount table", err);
	if (rc < 0)
		return rc;
	rc = alloc_aligned(s, &s->hdr, bs, err);
	if (rc == 0)
		rc = read_at(s, s->hdr, bs, 0, "header", err);
	if (rc < 0)
		return rc;
	q2_mw_init(s, &s->hdr_mw, s->hdr, 0, bs, NULL);
	q2_mw_init(s, &s->l1_mw, s->l1, s->h.l1_table_offset, s->l1_bytes,
		   NULL);
	q2_mw_init(s, &s->rt_mw, s->rt, s->h.refcount_table_offset, s->rt_bytes,
		   NULL);
	return 0;
}

/* Clear the autoclear bits (unknown ones, and bitmaps: we do not keep
 * persistent bitmaps up to date), as the spec asks of a writer. */
static int clear_autoclear(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;

	if (s->read_only || s->h.version < 3 || !s->h.autoclear_features)
		return 0;
	/* At open: a blocking write is fine here. */
	bks_put_be64(s->hdr + BKS_QCOW2_OFF_AUTOCLEAR, 0);
	if (pwrite(s->img.fd, s->hdr, s->block_size, 0) !=
	    (ssize_t)s->block_size)
		return bks_error_set(err, errno ? errno : EIO,
				     "%s: clearing the autoclear features",
				     s->path);
	s->h.autoclear_features = 0;
	return 0;
}

static int open_pools(struct qcow2_state *st, struct bks_error *err)
{
	struct q2 *s = &st->s;
	uint64_t cs = s->g.cluster_size;
	uint64_t n = (4u << 20) / cs;
	int rc;

	if (n < 4)
		n = 4;
	if (n > 64)
		n = 64;
	st->nqops = (unsigned int)n;
	st->qops = calloc(st->nqops, sizeof(*st->qops));
	if (!st->qops)
		return bks_error_set(err, ENOMEM, "%s: operations", s->path);
	rc = alloc_aligned(s, &st->qop_mem, st->nqops * cs, err);
	if (rc == 0)
		rc = alloc_aligned(s, &st->zero, cs, err);
	st->cbuf_size = 2 * cs + 2 * s->block_size;
	if (rc == 0)
		rc = alloc_aligned(s, &st->cbuf_mem, Q2_CBUFS * st->cbuf_size,
				   err);
	if (rc < 0)
		return rc;
	for (unsigned int i = st->nqops; i-- > 0;) {
		st->qops[i].st = st;
		st->qops[i].buf = st->qop_mem + i * cs;
		st->qops[i].next_free = st->free_qops;
		st->free_qops = &st->qops[i];
	}
	for (unsigned int i = Q2_QREQS; i-- > 0;) {
		st->qreqs[i].st = st;
		st->qreqs[i].next_free = st->free_qreqs;
		st->free_qreqs = &st->qreqs[i];
	}
	for (unsigned int i = Q2_CBUFS; i-- > 0;) {
		st->cbufs[i].buf = st->cbuf_mem + i * st->cbuf_size;
		st->cbufs[i].next = st->free_cbufs;
		st->free_cbufs = &st->cbufs[i];
	}
	for (unsigned int i = 0; i < Q2_CBUFS; i++) {
		struct cbuf *cb = &st->cbufs[i];

		if (inflateInit2(&cb->zs, -15) != Z_OK)
			return bks_error_setmsg(
			    err, ENOMEM, "%s: zlib inflateInit2", s->path);
		cb->zs_ok = true;
		cb->zd = ZSTD_createDCtx();
		if (!cb->zd)
			return bks_error_setmsg(err, ENOMEM,
						"%s: ZSTD_createDCtx", s->path);
	}
	return 0;
}

static void free_all(struct qcow2_state *st)
{
	struct q2 *s = &st->s;

	bks_aioq_free(s->q);
	s->q = NULL;
	bks_offload_free(s->off, Q2_CLOSE_WAIT_NS);
	s->off = NULL;
	q2_cache_free(s);
	for (unsigned int i = 0; i < Q2_CBUFS; i++) {
		struct cbuf *cb = &st->cbufs[i];

		if (cb->zs_ok)
			inflateEnd(&cb->zs);
		cb->zs_ok = false;
		ZSTD_freeDCtx(cb->zd);
		cb->zd = NULL;
	}
	free(st->qops);
	free(st->qop_mem);
	free(st->zero);
	free(st->cbuf_mem);
	free(s->l1);
	free(s->rt);
	free(s->hdr);
	s->hdr = NULL;
	free(st->parent_path);
	st->qops = NULL;
	st->qop_mem = st->zero = st->cbuf_mem = s->l1 = s->rt = NULL;
	st->parent_path = NULL;
	bks_image_close(&s->img);
}

static int qcow2_open(void *state, struct bks_layer *self,
		      const struct bks_open_args *args, struct bks_error *err)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	uint32_t off_align, mem_align;
	unsigned int flags;
	int rc;

	s->self = self;
	s->path = bks_layer_args(self);
	s->read_only = args->read_only;
	rc = bks_image_open_format(
	    &s->img, s->path, (args->read_only ? O_RDONLY : O_RDWR) | O_DIRECT,
	    err);
	if (rc < 0)
		return rc;
	s->block_size = s->img.block_size > 512 ? s->img.block_size : 512;
	bks_image_dio_align(&s->img, &off_align, &mem_align);
	if (off_align > s->block_size)
		s->block_size = off_align;
	s->mem_align =
	    mem_align && power_of_two(mem_align) ? mem_align : s->block_size;
	s->file_size = s->img.size;
	s->read_end = s->file_size & ~(uint64_t)(s->block_size - 1);
	rc = open_header(st, err);
	if (rc < 0)
		goto out;
	s->g = s->h.g;
	flags =
	    BKS_QCOW2_HAVE_ZSTD | (args->read_only ? 0 : BKS_QCOW2_OPEN_WRITE);
	rc = bks_qcow2_check_features(&s->h, flags, err);
	if (rc < 0) {
		bks_error_prepend(err, "%s: ", s->path);
		goto out;
	}
	if (s->h.size == 0 || s->h.size % s->block_size ||
	    s->g.cluster_size < s->block_size) {
		rc = bks_error_setmsg(
		    err, EINVAL,
		    "%s: qcow2 virtual size %llu is 0 or not a multiple of "
		    "the block size %u (or clusters are smaller)",
		    s->path, (unsigned long long)s->h.size, s->block_size);
		goto out;
	}
	rc = open_tables(st, err);
	if (rc == 0)
		rc = clear_autoclear(st, err);
	if (rc == 0)
		rc = q2_cache_init(s, args->meta_cache, err);
	if (rc == 0)
		rc = open_pools(st, err);
	if (rc < 0)
		goto out;
	s->alloc_end =
	    (s->file_size + s->g.cluster_size - 1) & ~(s->g.cluster_size - 1);
	rc = bks_offload_new(&s->off, args->loop, Q2_THREADS,
			     Q2_QUEUE_DEPTH + Q2_CBUFS + 8, err);
	if (rc == 0)
		rc = bks_aioq_new(&s->q, args->loop, Q2_QUEUE_DEPTH, s->off,
				  err);
	if (rc < 0)
		bks_error_prepend(err, "%s: ", s->path);
out:
	if (rc < 0)
		free_all(st);
	return rc;
}

static void qcow2_close(void *state, struct bks_layer *self)
{
	struct qcow2_state *st = state;

	(void)self;
	q2_alloc_release(&st->s);
	free_all(st);
}

static int qcow2_info(void *state, struct bks_layer *self,
		      struct bks_info *info)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;

	(void)self;
	info->size = s->h.size;
	info->block_size = s->block_size;
	info->max_io = 0;
	info->max_discard = BKS_FILE_MAX_RANGE;
	info->max_write_zeroes = BKS_FILE_MAX_RANGE;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_WRITE) |
		    BKS_OPF(BKS_OP_FLUSH) | BKS_OPF(BKS_OP_DISCARD) |
		    BKS_OPF(BKS_OP_WRITE_ZEROES);
	info->read_only = s->read_only;
	info->can_fua = true;
	info->zero_no_hole = true;
	return 0;
}

/* ---- the backing file ---------------------------------------------------- */

/* Escape | and \ for a chain string (chain.h). */
static int put_escaped(char *buf, size_t size, size_t *pos, const char *s)
{
	for (; *s; s++) {
		if ((*s == '|' || *s == '\\') && *pos + 1 < size)
			buf[(*pos)++] = '\\';
		if (*pos + 1 >= size)
			return -ENAMETOOLONG;
		buf[(*pos)++] = *s;
	}
	buf[*pos] = 0;
	return 0;
}

/* Is the file at path a qcow2 image (its first bytes)?  At open. */
static int probe_qcow2(const char *path, bool *is_qcow2, struct bks_error *err)
{
	unsigned char magic[4];
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
	ssize_t n;

	if (fd < 0)
		return bks_error_set(err, errno, "backing file %s", path);
	n = pread(fd, magic, sizeof(magic), 0);
	close(fd);
	*is_qcow2 = n == 4 && bks_qcow2_probe(magic, 4);
	return 0;
}

static int qcow2_get_parent(void *state, struct bks_layer *self, char *buf,
			    size_t size, struct bks_error *err)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	const char *name = s->h.backing_file;
	const char *fmt = s->h.has_backing_format ? s->h.backing_format : NULL;
	char path[PATH_MAX];
	bool is_qcow2 = false;
	size_t pos = 0;
	int rc;

	(void)self;
	if (!s->h.has_backing)
		return BKS_NO_PARENT;
	if (name[0] == '/') {
		if (strlen(name) >= sizeof(path))
			return bks_error_setmsg(err, ENAMETOOLONG,
						"%s: backing file name too "
						"long",
						s->path);
		strcpy(path, name);
	} else {
		/* Relative to the directory of the image naming it. */
		const char *slash = strrchr(s->path, '/');
		int dl = (int)(slash - s->path);

		if (snprintf(path, sizeof(path), "%.*s/%s", dl, s->path,
			     name) >= (int)sizeof(path))
			return bks_error_setmsg(err, ENAMETOOLONG,
						"%s: backing file name too "
						"long",
						s->path);
	}
	if (fmt && strcmp(fmt, "qcow2") == 0) {
		is_qcow2 = true;
	} else if (fmt && strcmp(fmt, "raw") == 0) {
		is_qcow2 = false;
	} else if (fmt) {
		char shown[BKS_QCOW2_MAX_BACKING_FMT + 1];

		snprintf(shown, sizeof(shown), "%s", fmt);
		bks_sanitize_line(shown);
		return bks_error_setmsg(err, ENOTSUP,
					"%s: backing file %s has format '%s': "
					"only qcow2 and raw are supported",
					s->path, path, shown);
	} else {
		rc = probe_qcow2(path, &is_qcow2, err);
		if (rc < 0)
			return bks_error_prepend(err, "%s: ", s->path);
	}
	rc = put_escaped(buf, size, &pos, is_qcow2 ? "qcow2:" : "aio:");
	if (rc == 0)
		rc = put_escaped(buf, size, &pos, path);
	if (rc < 0)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"%s: backing file %s: name too long",
					s->path, path);
	return 0;
}

/* ---- stats --------------------------------------------------------------- */

static void qcow2_stats(void *state, struct bks_layer *self,
			struct bks_stats_out *out)
{
	struct qcow2_state *st = state;
	struct q2 *s = &st->s;
	const struct q2_stats *c = &s->st;

	(void)self;
	bks_stats_u64(out, "version", s->h.version);
	bks_stats_u64(out, "cluster_size", s->g.cluster_size);
	bks_stats_u64(out, "cache_slots", s->nslots);
	bks_stats_u64(out, "cache_hits", c->cache_hits);
	bks_stats_u64(out, "cache_misses", c->cache_misses);
	bks_stats_u64(out, "cache_evictions", c->cache_evictions);
	bks_stats_u64(out, "cache_waits", c->cache_waits);
	bks_stats_u64(out, "meta_writes", c->meta_writes);
	bks_stats_u64(out, "clusters_allocated", c->clusters_allocated);
	bks_stats_u64(out, "clusters_reserved", c->clusters_reserved);
	bks_stats_u64(out, "reservations", c->reservations);
	bks_stats_u64(out, "l2_allocated", c->l2_allocated);
	bks_stats_u64(out, "refblocks_allocated", c->refblocks_allocated);
	bks_stats_u64(out, "reftable_grown", c->reftable_grown);
	bks_stats_u64(out, "clusters_freed", c->clusters_freed);
	bks_stats_u64(out, "unref_errors", c->unref_errors);
	bks_stats_u64(out, "zero_clusters", c->zero_clusters);
	bks_stats_u64(out, "cow_bytes", c->cow_bytes);
	bks_stats_u64(out, "compressed_reads", c->compressed_reads);
	bks_stats_u64(out, "inflate_errors", st->inflate_errors);
	bks_stats_u64(out, "bad_entries", st->bad_entries);
	bks_stats_str(out, "last_error", st->last_error);
	bks_stats_u64(out, "alloc_waits", c->alloc_waits);
	bks_stats_u64(out, "subreq_waits", c->sub_waits);
}

#define QCOW2_DESC                                                             \
	{                                                                      \
		.name = "qcow2", .kind = BKS_SINK, .args_path = true,          \
		.usage = QCOW2_USAGE                                           \
	}

const struct bks_driver_desc bks_desc_qcow2 = QCOW2_DESC;

const struct bks_driver bks_driver_qcow2 = {
    .desc = QCOW2_DESC,
    .state_size = sizeof(struct qcow2_state),
    .subreq_max = Q2_SUBREQS,
    .subreq_data_size = sizeof(struct q2_sub),
    .open = qcow2_open,
    .close = qcow2_close,
    .info = qcow2_info,
    .read = qcow2_submit,
    .write = qcow2_submit,
    .flush = qcow2_submit,
    .discard = qcow2_submit,
    .write_zeroes = qcow2_submit,
    .block_status = qcow2_submit,
    .get_parent = qcow2_get_parent,
    .stats = qcow2_stats,
};
