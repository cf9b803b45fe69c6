/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The qcow2: driver's mapping of guest clusters (see qcow2-int.h): where a
 * guest cluster is (the L1 table in memory, the L2 table from the cache),
 * what kind it is, and how far a run of one kind goes.  Used by the
 * request cursors (qcow2-req.c) and the operations (qcow2-op.c).
 */
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/endian.h"
#include "blkstack/iov.h"
#include "qcow2-int.h"

/* ---- lookups ------------------------------------------------------------- */

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
int q2_lookup(struct qcow2_state *st, uint64_t pos, struct q2_wait *w,
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

enum cls q2_classify(const struct qcow2_state *st,
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
uint64_t q2_run_bytes(struct qcow2_state *st, uint64_t pos, uint64_t end,
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
		if (q2_classify(st, &l2) != c)
			break;
		if (c == CL_DATA &&
		    (l2.host_offset != first->host_offset + n * cs ||
		     (direct_only && !l2.copied)))
			break;
		/*
		 * A direct write stops at a cluster an operation holds: its
		 * entry may be in the cache before it is in the file.
		 */
		if (direct_only && q2_op_locked(st, p >> g->cluster_bits))
			break;
		p += cs;
		n++;
	}
	return (p < end ? p : end) - pos;
}
