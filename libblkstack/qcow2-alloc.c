/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Host cluster allocation for the qcow2: driver (see qcow2-int.h).
 *
 * Clusters are only ever allocated at the end of the file, never reused
 * inside it: a fresh cluster is past everything ever written, so it reads
 * as zeroes (a hole), and a write to it need not write the rest of the
 * cluster.  They are reserved in runs: one reservation
 *   1. extends the file over the run (ftruncate, on a helper thread), so
 *      that every cluster of it can be read;
 *   2. raises the refcounts of the run to 1 in the refcount block (a new
 *      refcount block, placed at the start of the run and counting itself,
 *      is written whole first, then the refcount table entry pointing at
 *      it), and waits for those writes;
 *   3. syncs the file (aio fdsync), so that after a power loss too no
 *      cluster is referenced whose refcount is not on disk;
 * and then hands the clusters out one by one with no further refcount
 * write.  A crash leaks the clusters reserved and not used yet (refcount
 * 1, referenced by nothing): qemu-img check counts them as leaks, which
 * are harmless and repaired with -r leaks.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "qcow2-int.h"

enum {
	RES_SCAN,     /* find the run (refcount block loaded or new) */
	RES_TRUNCATE, /* extending the file */
	RES_COUNT,    /* refcounts raised, written */
	RES_NEW_RB,   /* a new refcount block written, now the table */
	RES_FLUSH,    /* the sync */
	RES_DONE,     /* synced: hand the run out */
	/* Growing the refcount table (see res_grow()). */
	RES_G_TRUNCATE, /* extending the file over the new area */
	RES_G_BLOCK,	/* writing the new refcount blocks, one by one */
	RES_G_TABLE,	/* writing the new table */
	RES_G_SYNCED,	/* the sync done: switch the header */
	RES_G_HEADER,	/* the header written: free the old table */
	RES_G_FREE,	/* freeing the old table's clusters */
};

static void res_step(struct q2 *s);
static void res_grow(struct q2 *s);

static void res_finish(struct q2 *s, int result)
{
	s->reserving = false;
	if (s->res_slot) {
		q2_slot_unpin(s->res_slot);
		s->res_slot = NULL;
	}
	if (result == 0) {
		s->st.reservations++;
		s->st.clusters_reserved += s->res_stop - s->res_start;
		s->res_next = s->res_start << s->g.cluster_bits;
		s->res_end = s->res_stop << s->g.cluster_bits;
		s->alloc_end = s->res_end;
	}
	q2_wlist_wake(&s->res_waiters, result);
}

static void res_resume(struct q2_wait *w, int result)
{
	struct q2 *s = (struct q2 *)((char *)w - offsetof(struct q2, res_w));

	if (result < 0) {
		res_finish(s, result);
		return;
	}
	res_step(s);
}

static int truncate_run(struct bks_offload_job *job)
{
	struct q2 *s = job->opaque;

	if (ftruncate(s->img.fd, (off_t)s->res_truncate) < 0)
		return -errno;
	return 0;
}

static void truncate_done(struct bks_offload_job *job, int result)
{
	struct q2 *s = job->opaque;

	bks_layer_busy_put(s->self);
	if (result == 0 && s->res_truncate > s->file_size)
		s->file_size = s->read_end = s->res_truncate;
	res_resume(&s->res_w, result);
}

static void flush_done(struct bks_req *sub, int result)
{
	struct q2 *s = ((struct q2_sub *)bks_subreq_data(sub))->owner;

	q2_sub_put(s, sub);
	s->res_step = s->res_after;
	res_resume(&s->res_w, result);
}

/* Bytes of a refcount block holding refcounts [first, last], for the
 * writer. */
static void rc_bytes(const struct bks_qcow2_geom *g, uint64_t first,
		     uint64_t last, uint32_t *off, uint32_t *len)
{
	uint64_t a = (first << g->refcount_order) >> 3;
	uint64_t b = (((last + 1) << g->refcount_order) + 7) >> 3;

	*off = (uint32_t)a;
	*len = (uint32_t)(b - a);
}

/* Extend the file to end bytes on a helper thread: true if started (the
 * step resumes when done), false if it is long enough already. */
static bool res_truncate(struct q2 *s, uint64_t end)
{
	int rc;

	s->res_truncate = end;
	if (end <= s->file_size)
		return false;
	s->res_job.fn = truncate_run;
	s->res_job.done = truncate_done;
	s->res_job.opaque = s;
	bks_layer_busy_get(s->self);
	rc = bks_offload_submit(s->off, &s->res_job);
	if (rc < 0) {
		bks_layer_busy_put(s->self);
		res_finish(s, rc);
	}
	return true;
}

/* Find the run from alloc_end: 0 with res_start/res_stop/res_rb set (with
 * res_slot pinned if the block exists), 1 waiting, -errno. */
static int res_scan(struct q2 *s)
{
	const struct bks_qcow2_geom *g = &s->g;
	struct bks_error err = {0};
	uint64_t want = Q2_RESERVE_BYTES >> g->cluster_bits;

	if (want < Q2_RESERVE_MIN)
		want = Q2_RESERVE_MIN;
	for (;;) {
		uint64_t c = s->alloc_end >> g->cluster_bits;
		uint64_t r = c >> g->rb_bits;
		uint64_t block_end = (r + 1) << g->rb_bits;
		uint64_t rb_off;
		struct q2_slot *slot;
		int rc;

		if (r >= s->rt_entries)
			/* The refcount table is full: grow it, if it can. */
			return r < s->rt_cap / 8 ? 2 : -ENOSPC;
		rc = bks_qcow2_reftable_decode(g, bks_get_be64(s->rt + 8 * r),
					       &rb_off, &err);
		if (rc < 0)
			return -EIO;
		s->res_start = c;
		s->res_stop = c + want < block_end ? c + want : block_end;
		if (rb_off == 0) {
			/* A new block at c, counting itself and the run. */
			s->res_rb = c;
			return 0;
		}
		s->res_rb = 0;
		rc = q2_cache_get(s, rb_off, &s->res_w, &slot);
		if (rc != 0)
			return rc;
		/* Skip clusters in use (leaked by a crash, say). */
		while (c < block_end &&
		       bks_qcow2_refcount_get(g, slot->buf,
					      c & (g->rb_entries - 1)) != 0)
			c++;
		if (c == block_end) {
			s->alloc_end = block_end << g->cluster_bits;
			continue;
		}
		s->res_start = c;
		s->res_stop = c + want < block_end ? c + want : block_end;
		for (uint64_t i = c; i < s->res_stop; i++)
			if (bks_qcow2_refcount_get(g, slot->buf,
						   i & (g->rb_entries - 1))) {
				s->res_stop = i;
				break;
			}
		if (s->res_stop <= s->res_start)
			s->res_stop = s->res_start + 1;
		q2_slot_pin(slot);
		s->res_slot = slot;
		return 0;
	}
}

/* Sync the file, then go on at step after. */
static void res_flush(struct q2 *s, int after)
{
	struct bks_req *sub;

	s->res_step = RES_FLUSH;
	s->res_after = after;
	sub = q2_sub_get(s, &s->res_w);
	if (!sub)
		return;
	((struct q2_sub *)bks_subreq_data(sub))->owner = s;
	sub->op = BKS_OP_FLUSH;
	sub->done = flush_done;
	bks_aioq_queue(s->q, s->img.fd, sub);
}

/*
 * Growing the refcount table, to its capacity in memory (rt_cap: sized at
 * open for everything the image can come to hold).  The new area starts
 * at the next refcount block boundary at the end of the file: new
 * refcount blocks counting the area itself, then the new table (the old
 * entries and the new blocks').  In order, each step after the one
 * before completed: the file is extended; each new block is written; the
 * new table is written; the file is synced; the header is switched to
 * the new table (one block: refcount_table_offset and _clusters change
 * together); the old table's clusters are freed.  A crash before the
 * switch leaves the old table in charge and the new area counted by
 * nothing (unused space); after it, at most the old table leaks.
 */
static void res_grow(struct q2 *s)
{
	const struct bks_qcow2_geom *g = &s->g;
	uint64_t cs = g->cluster_size;
	struct q2_slot *slot;
	int rc;

	switch (s->res_step) {
	case RES_G_TRUNCATE: {
		uint64_t c =
		    (s->alloc_end >> g->cluster_bits) + g->rb_entries - 1;
		uint64_t nt = s->rt_cap >> g->cluster_bits, nb = 1;

		c &= ~(g->rb_entries - 1);
		while (nb * g->rb_entries < nb + nt)
			nb++;
		if ((c >> g->rb_bits) + nb > s->rt_cap / 8) {
			res_finish(s, -ENOSPC);
			return;
		}
		s->grow_start = c;
		s->grow_nb = nb;
		s->grow_nt = nt;
		s->grow_i = 0;
		s->res_step = RES_G_BLOCK;
		if (res_truncate(s, (c + nb + nt) << g->cluster_bits))
			return;
	}
		/* fall through */
	case RES_G_BLOCK:
		if (s->res_slot) {
			/* The block is on disk: the next one. */
			q2_cache_created(s, s->res_slot, 0);
			s->res_slot = NULL;
			s->st.refblocks_allocated++;
			s->grow_i++;
		}
		if (s->grow_i < s->grow_nb) {
			uint64_t first =
			    s->grow_start + s->grow_i * g->rb_entries;
			uint64_t end = s->grow_start + s->grow_nb + s->grow_nt;

			rc = q2_cache_create(
			    s, (s->grow_start + s->grow_i) << g->cluster_bits,
			    &s->res_w, &slot);
			if (rc == 1)
				return;
			s->res_slot = slot;
			for (uint64_t i = first;
			     i < end && i < first + g->rb_entries; i++)
				bks_qcow2_refcount_set(
				    g, slot->buf, i & (g->rb_entries - 1), 1);
			bks_put_be64(s->rt + 8 * (first >> g->rb_bits),
				     (s->grow_start + s->grow_i)
					 << g->cluster_bits);
			q2_mw_write(&slot->mw, 0, (uint32_t)cs, &s->res_w);
			return;
		}
		/* The new table, whole, at its new place. */
		s->res_step = RES_G_TABLE;
		q2_mw_init(s, &s->rt_mw, s->rt,
			   (s->grow_start + s->grow_nb) << g->cluster_bits,
			   (uint32_t)(s->grow_nt << g->cluster_bits), NULL);
		q2_mw_write(&s->rt_mw, 0, (uint32_t)(s->grow_nt * cs),
			    &s->res_w);
		return;
	case RES_G_TABLE:
		res_flush(s, RES_G_SYNCED);
		return;
	case RES_G_SYNCED:
		s->grow_old_off = s->h.refcount_table_offset;
		s->grow_old_n = s->h.refcount_table_clusters;
		s->h.refcount_table_offset = (s->grow_start + s->grow_nb)
					     << g->cluster_bits;
		s->h.refcount_table_clusters = (uint32_t)s->grow_nt;
		bks_put_be64(s->hdr + 48, s->h.refcount_table_offset);
		bks_put_be32(s->hdr + 56, s->h.refcount_table_clusters);
		s->rt_bytes = (uint32_t)(s->grow_nt << g->cluster_bits);
		s->rt_entries = s->rt_bytes / 8;
		s->alloc_end = (s->grow_start + s->grow_nb + s->grow_nt)
			       << g->cluster_bits;
		s->st.reftable_grown++;
		s->res_step = RES_G_HEADER;
		q2_mw_write(&s->hdr_mw, 48, 12, &s->res_w);
		return;
	case RES_G_HEADER:
		s->grow_i = 0;
		s->res_step = RES_G_FREE;
		/* fall through */
	case RES_G_FREE:
		if (s->grow_i < s->grow_old_n) {
			uint64_t host = s->grow_old_off + s->grow_i * cs;

			s->grow_i++;
			q2_unref(s, &s->res_unref, host, &s->res_w);
			return;
		}
		/* Now the run, with room in the table. */
		s->res_step = RES_SCAN;
		res_step(s);
		return;
	}
}

static void res_step(struct q2 *s)
{
	const struct bks_qcow2_geom *g = &s->g;
	struct q2_slot *slot;
	uint32_t off, len;
	int rc;

	switch (s->res_step) {
	case RES_SCAN:
		rc = res_scan(s);
		if (rc == 1)
			return;
		if (rc == 2) {
			s->res_step = RES_G_TRUNCATE;
			res_grow(s);
			return;
		}
		if (rc < 0) {
			res_finish(s, rc);
			return;
		}
		s->res_step = RES_TRUNCATE;
		if (res_truncate(s, s->res_stop << g->cluster_bits))
			return;
		/* fall through */
	case RES_TRUNCATE:
		s->res_step = RES_COUNT;
		if (s->res_rb) {
			rc = q2_cache_create(s, s->res_rb << g->cluster_bits,
					     &s->res_w, &slot);
			if (rc == 1) {
				s->res_step = RES_TRUNCATE;
				return;
			}
			s->res_slot = slot; /* pinned by create */
			for (uint64_t i = s->res_start; i < s->res_stop; i++)
				bks_qcow2_refcount_set(
				    g, slot->buf, i & (g->rb_entries - 1), 1);
			s->st.refblocks_allocated++;
			s->res_step = RES_NEW_RB;
			q2_mw_write(&slot->mw, 0, (uint32_t)g->cluster_size,
				    &s->res_w);
			return;
		}
		slot = s->res_slot;
		for (uint64_t i = s->res_start; i < s->res_stop; i++)
			bks_qcow2_refcount_set(g, slot->buf,
					       i & (g->rb_entries - 1), 1);
		rc_bytes(g, s->res_start & (g->rb_entries - 1),
			 (s->res_stop - 1) & (g->rb_entries - 1), &off, &len);
		q2_mw_write(&slot->mw, off, len, &s->res_w);
		return;
	case RES_NEW_RB: {
		uint64_t r = s->res_rb >> g->rb_bits;

		/* The block is on disk: link it. */
		bks_put_be64(s->rt + 8 * r, s->res_rb << g->cluster_bits);
		q2_cache_created(s, s->res_slot, 0);
		s->res_slot = NULL;
		/* The block itself is not handed out. */
		s->res_start++;
		s->res_step = RES_COUNT;
		q2_mw_write(&s->rt_mw, (uint32_t)(8 * r), 8, &s->res_w);
		return;
	}
	case RES_COUNT:
		res_flush(s, RES_DONE);
		return;
	case RES_FLUSH:
		res_flush(s, s->res_after); /* woken for a sub-request */
		return;
	case RES_DONE:
		res_finish(s, 0);
		return;
	default:
		res_grow(s);
		return;
	}
}

int q2_alloc_cluster(struct q2 *s, struct q2_wait *w, uint64_t *host)
{
	if (s->res_next < s->res_end && !s->res_waiters.head) {
		*host = s->res_next;
		s->res_next += s->g.cluster_size;
		s->st.clusters_allocated++;
		return 0;
	}
	s->st.alloc_waits++;
	q2_wlist_add(&s->res_waiters, w);
	if (!s->reserving && s->res_next >= s->res_end) {
		s->reserving = true;
		s->res_step = RES_SCAN;
		s->res_w.fn = res_resume;
		res_step(s);
	}
	return 1;
}

/* ---- lowering a refcount ------------------------------------------------- */

static void unref_written(struct q2_wait *w, int result)
{
	struct q2_unref *u =
	    (struct q2_unref *)((char *)w - offsetof(struct q2_unref, w));

	if (result < 0)
		u->s->st.unref_errors++;
	else
		u->s->st.clusters_freed++;
	u->done->fn(u->done, 0);
}

static void unref_step(struct q2_wait *w, int result)
{
	struct q2_unref *u =
	    (struct q2_unref *)((char *)w - offsetof(struct q2_unref, w));
	struct q2 *s = u->s;
	const struct bks_qcow2_geom *g = &s->g;
	struct bks_error err = {0};
	uint64_t c = u->host >> g->cluster_bits, r = c >> g->rb_bits;
	uint64_t idx = c & (g->rb_entries - 1), rb_off, v;
	struct q2_slot *slot;
	uint32_t off, len;
	int rc;

	if (result < 0 || r >= s->rt_entries ||
	    bks_qcow2_reftable_decode(g, bks_get_be64(s->rt + 8 * r), &rb_off,
				      &err) < 0 ||
	    rb_off == 0)
		goto fail;
	rc = q2_cache_get(s, rb_off, &u->w, &slot);
	if (rc == 1)
		return;
	if (rc < 0)
		goto fail;
	v = bks_qcow2_refcount_get(g, slot->buf, idx);
	if (v == 0)
		goto fail;
	bks_qcow2_refcount_set(g, slot->buf, idx, v - 1);
	rc_bytes(g, idx, idx, &off, &len);
	u->w.fn = unref_written;
	q2_mw_write(&slot->mw, off, len, &u->w);
	return;
fail:
	s->st.unref_errors++;
	u->done->fn(u->done, 0);
}

void q2_unref(struct q2 *s, struct q2_unref *u, uint64_t host,
	      struct q2_wait *done)
{
	u->s = s;
	u->host = host;
	u->done = done;
	u->w.fn = unref_step;
	unref_step(&u->w, 0);
}

/* ---- giving back the reservation at close -------------------------------- */

void q2_alloc_release(struct q2 *s)
{
	const struct bks_qcow2_geom *g = &s->g;
	struct bks_error err = {0};
	uint64_t first = s->res_next >> g->cluster_bits;
	uint64_t stop = s->res_end >> g->cluster_bits;
	uint64_t r = first >> g->rb_bits, rb_off;
	unsigned char *buf = NULL;

	if (s->read_only || first >= stop || r >= s->rt_entries ||
	    bks_qcow2_reftable_decode(g, bks_get_be64(s->rt + 8 * r), &rb_off,
				      &err) < 0 ||
	    rb_off == 0 || posix_memalign((void **)&buf, 4096, g->cluster_size))
		return;
	/* The whole run lies in one refcount block (res_scan). */
	if (pread(s->img.fd, buf, g->cluster_size, (off_t)rb_off) ==
	    (ssize_t)g->cluster_size) {
		for (uint64_t i = first; i < stop; i++)
			bks_qcow2_refcount_set(g, buf, i & (g->rb_entries - 1),
					       0);
		if (pwrite(s->img.fd, buf, g->cluster_size, (off_t)rb_off) ==
			(ssize_t)g->cluster_size &&
		    fdatasync(s->img.fd) == 0) {
			s->st.clusters_reserved -= stop - first;
			s->res_end = s->res_next;
			/* Nothing past the run: the file ends where it did. */
			if (stop << g->cluster_bits == s->file_size &&
			    ftruncate(s->img.fd,
				      (off_t)(first << g->cluster_bits)) == 0)
				s->file_size = s->read_end = first
							     << g->cluster_bits;
		}
	}
	free(buf);
}
