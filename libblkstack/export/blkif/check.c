/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export: what it advertises, and the checks of a request
 * (decoded from our private copy) against it.  One file for both, so
 * that what the guest is told and what it is held to cannot drift apart.
 * The chain checks again (docs/ring-backend.txt, "Validation").  See
 * internal.h.
 */
#include <errno.h>

#include "internal.h"

/* VDISK_READONLY of blkif.h's "info" node. */
#define VDISK_READONLY 4u

/* Refuse with status st, saying why in err: an expression. */
#define REFUSE(err, st, ...) (bks_error_setmsg(err, EINVAL, __VA_ARGS__), (st))

void bks_blkif_features(const struct bks_chain *chain, bool read_only,
			unsigned int max_indirect,
			struct bks_blkif_features *out)
{
	const struct bks_info *info = bks_chain_info(chain);
	bool ro = read_only || info->read_only;
	unsigned int max =
	    max_indirect ? max_indirect : BKS_BLKIF_DEFAULT_INDIRECT;

	if (max > BKS_BLKIF_INDIRECT_LIMIT)
		max = BKS_BLKIF_INDIRECT_LIMIT;
	/* A request of max full pages must fit the chain's largest I/O. */
	if (info->max_io && max > info->max_io / BKS_BLKIF_PAGE_SIZE)
		max = info->max_io / BKS_BLKIF_PAGE_SIZE;
	/* Indirect requests are for more than a direct one carries. */
	if (max <= BKS_BLKIF_MAX_SEGS)
		max = 0;
	*out = (struct bks_blkif_features){
	    .sectors = info->size / BKS_BLKIF_SECTOR,
	    .sector_size = BKS_BLKIF_SECTOR,
	    .physical_sector_size = info->block_size,
	    .info = ro ? VDISK_READONLY : 0,
	    .flush_cache = (info->ops & BKS_OPF(BKS_OP_FLUSH)) != 0,
	    .barrier = false,
	    .discard = !ro && (info->ops & BKS_OPF(BKS_OP_DISCARD)),
	    .discard_granularity = info->block_size,
	    .discard_alignment = 0,
	    .max_indirect_segments = max,
	    .max_ring_page_order = BKS_BLKIF_MAX_RING_ORDER,
	};
}

static bool read_only(const struct bks_blkif *rg)
{
	return rg->feat.info & VDISK_READONLY;
}

/* The disk's size in sectors, read anew (the chain's top may change). */
static uint64_t disk_sectors(const struct bks_blkif *rg)
{
	return bks_chain_info(rg->chain)->size / BKS_BLKIF_SECTOR;
}

static bool in_disk(const struct bks_blkif *rg, uint64_t sector, uint64_t n)
{
	uint64_t total = disk_sectors(rg);

	return sector <= total && n <= total - sector;
}

static int check_indirect(const struct bks_blkif *rg, const struct blkif_msg *m,
			  struct bks_error *err)
{
	if (rg->feat.max_indirect_segments == 0)
		return REFUSE(err, BKS_BLKIF_RSP_EOPNOTSUPP,
			      "indirect: not advertised");
	/* The inner op: blkfront sends only reads and writes indirect. */
	if (m->rsp_op != BKS_BLKIF_OP_READ && m->rsp_op != BKS_BLKIF_OP_WRITE)
		return REFUSE(err, BKS_BLKIF_RSP_ERROR,
			      "indirect: inner operation %u", m->rsp_op);
	/* The count decides how many indirect pages are read. */
	if (m->nseg == 0 || m->nseg > rg->feat.max_indirect_segments)
		return REFUSE(err, BKS_BLKIF_RSP_ERROR,
			      "indirect: %u segments (1 to %u)", m->nseg,
			      rg->feat.max_indirect_segments);
	if (m->rsp_op == BKS_BLKIF_OP_WRITE && read_only(rg))
		return REFUSE(err, BKS_BLKIF_RSP_ERROR,
			      "indirect: write to a read-only disk");
	return BKS_BLKIF_RSP_OKAY;
}

int check_request(const struct bks_blkif *rg, const struct blkif_msg *m,
		  struct bks_error *err)
{
	switch (m->op) {
	case BKS_BLKIF_OP_READ:
	case BKS_BLKIF_OP_WRITE:
		if (m->nseg == 0 || m->nseg > BKS_BLKIF_MAX_SEGS)
			return REFUSE(err, BKS_BLKIF_RSP_ERROR,
				      "%s: %u segments (1 to %u)",
				      m->op ? "write" : "read", m->nseg,
				      BKS_BLKIF_MAX_SEGS);
		if (m->op == BKS_BLKIF_OP_WRITE && read_only(rg))
			return REFUSE(err, BKS_BLKIF_RSP_ERROR,
				      "write: read-only disk");
		return BKS_BLKIF_RSP_OKAY;
	case BKS_BLKIF_OP_FLUSH_DISKCACHE:
		if (!rg->feat.flush_cache)
			return REFUSE(err, BKS_BLKIF_RSP_EOPNOTSUPP,
				      "flush: not advertised");
		/* With segments: a write with flushes around it (io.c). */
		if (m->nseg > BKS_BLKIF_MAX_SEGS)
			return REFUSE(err, BKS_BLKIF_RSP_ERROR,
				      "flush: %u segments (0 to %u)", m->nseg,
				      BKS_BLKIF_MAX_SEGS);
		if (m->nseg && read_only(rg))
			return REFUSE(err, BKS_BLKIF_RSP_ERROR,
				      "flush: data for a read-only disk");
		return BKS_BLKIF_RSP_OKAY;
	case BKS_BLKIF_OP_DISCARD:
		if (read_only(rg))
			return REFUSE(err, BKS_BLKIF_RSP_ERROR,
				      "discard: read-only disk");
		if (!rg->feat.discard)
			return REFUSE(err, BKS_BLKIF_RSP_EOPNOTSUPP,
				      "discard: not advertised");
		/* discard-secure is not advertised: its flag is ignored. */
		if (m->nsectors == 0 || !in_disk(rg, m->sector, m->nsectors))
			return REFUSE(err, BKS_BLKIF_RSP_ERROR,
				      "discard: sectors %llu+%llu of %llu",
				      (unsigned long long)m->sector,
				      (unsigned long long)m->nsectors,
				      (unsigned long long)disk_sectors(rg));
		return BKS_BLKIF_RSP_OKAY;
	case BKS_BLKIF_OP_INDIRECT:
		return check_indirect(rg, m, err);
	case BKS_BLKIF_OP_WRITE_BARRIER: /* feature-barrier is not offered */
	default:
		return REFUSE(err, BKS_BLKIF_RSP_EOPNOTSUPP,
			      "operation %u: not supported", m->op);
	}
}

int check_segs(const struct bks_blkif *rg, const struct blkif_seg *segs,
	       unsigned int n, uint64_t sector, uint64_t *len,
	       struct bks_error *err)
{
	uint64_t total = 0;

	for (unsigned int i = 0; i < n; i++) {
		if (segs[i].first > segs[i].last ||
		    segs[i].last >= BKS_BLKIF_PAGE_SECTORS)
			return REFUSE(err, BKS_BLKIF_RSP_ERROR,
				      "segment %u: sectors %u to %u of a page "
				      "(0 to %u)",
				      i, segs[i].first, segs[i].last,
				      BKS_BLKIF_PAGE_SECTORS - 1);
		total += (uint64_t)(segs[i].last - segs[i].first + 1);
	}
	if (!in_disk(rg, sector, total))
		return REFUSE(
		    err, BKS_BLKIF_RSP_ERROR, "sectors %llu+%llu of %llu",
		    (unsigned long long)sector, (unsigned long long)total,
		    (unsigned long long)disk_sectors(rg));
	*len = total * BKS_BLKIF_SECTOR;
	return BKS_BLKIF_RSP_OKAY;
}
