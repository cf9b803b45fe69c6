/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export: requests as the chain sees them.  A valid
 * request takes a slot (one per ring entry: never short of one) and a
 * buffer (the slot's own for up to 11 segments, one of the big ones for
 * an indirect request), its data is grant-copied in (a write), and it
 * goes to the chain as one bks_req -- at the guest's sectors, which the
 * chain pads to its blocks -- or, for a flush carrying data, as flush,
 * write, flush on the same bks_req.  On completion a read's data is
 * copied out, and the response is written on the ring; the ring's
 * deferred call pushes it.  See internal.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

static size_t align_page(size_t v)
{
	return (v + BKS_BLKIF_PAGE_SIZE - 1) &
	       ~(size_t)(BKS_BLKIF_PAGE_SIZE - 1);
}

static void *alloc_pages(size_t len)
{
	void *p = NULL;

	if (posix_memalign(&p, BKS_BLKIF_PAGE_SIZE, len) != 0)
		return NULL;
	return p;
}

int io_init(struct bks_blkif *rg, unsigned int big_bufs, struct bks_error *err)
{
	unsigned int max = rg->feat.max_indirect_segments;
	unsigned int npages =
	    (max + BKS_BLKIF_SEGS_PER_PAGE - 1) / BKS_BLKIF_SEGS_PER_PAGE;
	/* The skew of a request's data is below one block. */
	size_t skew = rg->block_size - 1;
	int rc = -ENOMEM;

	rg->direct_size =
	    align_page(skew + BKS_BLKIF_MAX_SEGS * BKS_BLKIF_PAGE_SIZE);
	rg->slots = calloc(rg->nr_ents, sizeof(*rg->slots));
	rg->direct_bufs = alloc_pages(rg->direct_size * rg->nr_ents);
	rg->ncopies = max > BKS_BLKIF_MAX_SEGS ? max : BKS_BLKIF_MAX_SEGS;
	rg->copies = calloc(rg->ncopies, sizeof(*rg->copies));
	rg->grefs = calloc(rg->ncopies, sizeof(*rg->grefs));
	if (!rg->slots || !rg->direct_bufs || !rg->copies || !rg->grefs)
		goto out;
	for (unsigned int i = rg->nr_ents; i-- > 0;) {
		struct blkif_slot *s = &rg->slots[i];

		s->rg = rg;
		s->next = rg->free_slots;
		rg->free_slots = s;
	}
	rg->stats.buffer_bytes = rg->direct_size * rg->nr_ents;
	if (max) {
		rg->big_size =
		    align_page(skew + (size_t)max * BKS_BLKIF_PAGE_SIZE);
		rg->bigs = calloc(big_bufs, sizeof(*rg->bigs));
		if (!rg->bigs)
			goto out;
	}
	for (unsigned int i = 0; max && i < big_bufs; i++) {
		struct blkif_big *b = &rg->bigs[i];

		rg->nbigs++;
		b->data = alloc_pages(rg->big_size);
		b->raw = alloc_pages((size_t)npages * BKS_BLKIF_PAGE_SIZE);
		b->segs = calloc(max, sizeof(*b->segs));
		if (!b->data || !b->raw || !b->segs)
			goto out;
		b->next = rg->free_bigs;
		rg->free_bigs = b;
		rg->stats.buffer_bytes += rg->big_size;
	}
	rc = 0;
out:
	/* What was allocated is io_free()'s, called by our caller. */
	if (rc < 0)
		bks_error_set(err, ENOMEM, "blkif: buffers for a ring of %u",
			      rg->nr_ents);
	return rc;
}

void io_free(struct bks_blkif *rg)
{
	for (unsigned int i = 0; i < rg->nbigs; i++) {
		free(rg->bigs[i].data);
		free(rg->bigs[i].raw);
		free(rg->bigs[i].segs);
	}
	free(rg->bigs);
	free(rg->grefs);
	free(rg->copies);
	free(rg->direct_bufs);
	free(rg->slots);
}

bool io_big_available(const struct bks_blkif *rg)
{
	return rg->free_bigs != NULL;
}

/* Answer id with status (a response, pushed by the deferred call). */
static void answer(struct bks_blkif *rg, uint64_t id, uint8_t op,
		   int16_t status)
{
	if (status != BKS_BLKIF_RSP_OKAY)
		rg->stats.errors++;
	if (!rg->broken)
		ring_respond(rg, id, op, status);
	bks_defer_schedule(&rg->defer);
}

/* Refuse m now; err (the reason) is kept for bks_blkif_last_error(). */
static void refuse(struct bks_blkif *rg, uint64_t id, uint8_t op, int status,
		   const struct bks_error *err)
{
	rg->last = *err;
	bks_error_prepend(&rg->last, "request %llu: ", (unsigned long long)id);
	answer(rg, id, op, (int16_t)status);
}

/* s is finished: answer it and give its slot and buffer back. */
static void slot_finish(struct blkif_slot *s, int status,
			const struct bks_error *err)
{
	struct bks_blkif *rg = s->rg;

	rg->in_flight--;
	rg->stats.in_flight--;
	if (status == BKS_BLKIF_RSP_OKAY && s->nseg) {
		if (s->to_guest)
			rg->stats.bytes_read += s->len;
		else
			rg->stats.bytes_written += s->len;
	}
	if (status != BKS_BLKIF_RSP_OKAY)
		refuse(rg, s->id, s->rsp_op, status, err);
	else
		answer(rg, s->id, s->rsp_op, (int16_t)status);
	if (s->big) {
		s->big->next = rg->free_bigs;
		rg->free_bigs = s->big;
		s->big = NULL;
	}
	s->next = rg->free_slots;
	rg->free_slots = s;
}

/* Point rg->copies at s's segments and its buffer; returns their count. */
static unsigned int fill_copies(struct blkif_slot *s)
{
	struct bks_blkif *rg = s->rg;
	unsigned char *p = s->data + s->skew;

	for (unsigned int i = 0; i < s->nseg; i++) {
		const struct blkif_seg *g = &s->segs[i];
		uint16_t len =
		    (uint16_t)((g->last - g->first + 1) * BKS_BLKIF_SECTOR);

		rg->copies[i] = (struct bks_blkif_copy){
		    .gref = g->gref,
		    .offset = (uint16_t)(g->first * BKS_BLKIF_SECTOR),
		    .len = len,
		    .buf = p,
		};
		p += len;
	}
	return s->nseg;
}

static void slot_submit(struct blkif_slot *s);

static void slot_req_done(struct bks_req *req, int result)
{
	struct blkif_slot *s = req->opaque;
	struct bks_error err = {0};
	enum bks_op op = s->steps[s->step];

	if (result < 0) {
		bks_error_set(&err, -result, "%s", bks_op_name(op));
		/* What the chain cannot do, the guest may stop asking. */
		slot_finish(s,
			    result == -EOPNOTSUPP &&
				    (op == BKS_OP_FLUSH || op == BKS_OP_DISCARD)
				? BKS_BLKIF_RSP_EOPNOTSUPP
				: BKS_BLKIF_RSP_ERROR,
			    &err);
		return;
	}
	if (++s->step < s->nsteps) {
		slot_submit(s);
		return;
	}
	if (s->to_guest && grant_move(s->rg, fill_copies(s), true, &err) < 0) {
		slot_finish(s, BKS_BLKIF_RSP_ERROR, &err);
		return;
	}
	slot_finish(s, BKS_BLKIF_RSP_OKAY, NULL);
}

/* Submit s's current step to the chain. */
static void slot_submit(struct blkif_slot *s)
{
	struct bks_req *req = &s->req;
	enum bks_op op = s->steps[s->step];

	memset(req, 0, sizeof(*req));
	req->op = op;
	req->flags = s->step_flags[s->step];
	req->done = slot_req_done;
	req->opaque = s;
	if (op != BKS_OP_FLUSH) {
		req->offset = s->offset;
		req->len = s->len;
	}
	if (op == BKS_OP_READ || op == BKS_OP_WRITE) {
		s->iov.iov_base = s->data + s->skew;
		s->iov.iov_len = s->len;
		req->iov = &s->iov;
		req->iovcnt = 1;
	}
	bks_chain_submit(s->rg->chain, req);
}

static void plan_step(struct blkif_slot *s, enum bks_op op, uint32_t flags)
{
	s->steps[s->nsteps] = op;
	s->step_flags[s->nsteps] = flags;
	s->nsteps++;
}

/*
 * The chain steps of s.  A flush with data is blkfront's write with
 * PREFLUSH and FUA: what was written before is durable before this
 * write, and this write is durable at the response.
 */
static void slot_plan(struct blkif_slot *s, uint8_t op)
{
	bool fua = bks_chain_info(s->rg->chain)->can_fua;

	s->nsteps = 0;
	s->step = 0;
	switch (op) {
	case BKS_BLKIF_OP_READ:
		plan_step(s, BKS_OP_READ, 0);
		break;
	case BKS_BLKIF_OP_WRITE:
		plan_step(s, BKS_OP_WRITE, 0);
		break;
	case BKS_BLKIF_OP_FLUSH_DISKCACHE:
		plan_step(s, BKS_OP_FLUSH, 0);
		if (s->nseg) {
			plan_step(s, BKS_OP_WRITE, fua ? BKS_REQ_FUA : 0);
			if (!fua)
				plan_step(s, BKS_OP_FLUSH, 0);
		}
		break;
	case BKS_BLKIF_OP_DISCARD:
		plan_step(s, BKS_OP_DISCARD, 0);
		break;
	}
}

/*
 * Copy an indirect request's pages out of the guest, and decode their
 * segments into s->big.  Returns 0 or -errno with err.
 */
static int read_indirect(struct blkif_slot *s, const struct blkif_msg *m,
			 struct bks_error *err)
{
	struct bks_blkif *rg = s->rg;
	unsigned int npages =
	    (m->nseg + BKS_BLKIF_SEGS_PER_PAGE - 1) / BKS_BLKIF_SEGS_PER_PAGE;
	unsigned int left = m->nseg;
	int rc;

	for (unsigned int p = 0; p < npages; p++) {
		unsigned int n = left < BKS_BLKIF_SEGS_PER_PAGE
				     ? left
				     : BKS_BLKIF_SEGS_PER_PAGE;

		rg->copies[p] = (struct bks_blkif_copy){
		    .gref = m->igref[p],
		    .offset = 0,
		    .len = (uint16_t)(8 * n),
		    .buf = s->big->raw + (size_t)p * BKS_BLKIF_PAGE_SIZE,
		};
		left -= n;
	}
	rc = grant_move(rg, npages, false, err);
	if (rc < 0)
		return bks_error_prepend(err, "indirect page: ");
	/* Decoded from our copy only: the guest cannot change them now. */
	for (unsigned int p = 0; p < npages; p++) {
		unsigned int first = p * BKS_BLKIF_SEGS_PER_PAGE;
		unsigned int n = m->nseg - first < BKS_BLKIF_SEGS_PER_PAGE
				     ? m->nseg - first
				     : BKS_BLKIF_SEGS_PER_PAGE;

		abi_decode_segs(s->big->raw + (size_t)p * BKS_BLKIF_PAGE_SIZE,
				n, s->big->segs + first);
	}
	return 0;
}

/*
 * Set s up for m (checked by check_request()): its segments (an indirect
 * request's copied in), their check, its buffer, its steps, a write's
 * data copied in.  Returns 0, or -errno with err (the request fails).
 */
static int slot_prepare(struct blkif_slot *s, const struct blkif_msg *m,
			uint8_t op, struct bks_error *err)
{
	struct bks_blkif *rg = s->rg;
	size_t cap = rg->direct_size;

	s->segs = s->dseg;
	s->data = rg->direct_bufs + (size_t)(s - rg->slots) * rg->direct_size;
	if (op == BKS_BLKIF_OP_DISCARD) {
		s->nseg = 0;
		s->len = m->nsectors * BKS_BLKIF_SECTOR;
	} else if (m->op == BKS_BLKIF_OP_INDIRECT) {
		s->big = rg->free_bigs;
		rg->free_bigs = s->big->next;
		s->segs = s->big->segs;
		s->data = s->big->data;
		cap = rg->big_size;
		if (read_indirect(s, m, err) < 0)
			return -err->code;
	} else {
		memcpy(s->dseg, m->seg, (size_t)m->nseg * sizeof(m->seg[0]));
	}
	if (s->nseg && check_segs(rg, s->segs, s->nseg, m->sector, &s->len,
				  err) != BKS_BLKIF_RSP_OKAY)
		return -err->code;
	s->skew = bks_chain_buf_skew(rg->chain, s->offset);
	/* Sized for the block size at creation: a chain may not grow it. */
	if (s->skew + s->len > cap)
		return bks_error_setmsg(err, EINVAL,
					"%llu bytes at skew %zu: over the "
					"buffer",
					(unsigned long long)s->len, s->skew);
	slot_plan(s, op);
	if (s->nseg && !s->to_guest)
		return grant_move(rg, fill_copies(s), false, err);
	return 0;
}

/* Start s for m in the chain, or answer it with an error. */
static void slot_start(struct blkif_slot *s, const struct blkif_msg *m)
{
	struct bks_error err = {0};
	uint8_t op = m->op == BKS_BLKIF_OP_INDIRECT ? m->rsp_op : m->op;

	s->id = m->id;
	s->rsp_op = m->rsp_op;
	s->to_guest = op == BKS_BLKIF_OP_READ;
	s->nseg = m->nseg;
	s->len = 0;
	s->offset = m->sector * BKS_BLKIF_SECTOR;
	s->rg->in_flight++;
	s->rg->stats.in_flight++;
	if (slot_prepare(s, m, op, &err) < 0)
		slot_finish(s, BKS_BLKIF_RSP_ERROR, &err);
	else
		slot_submit(s);
}

void io_request(struct bks_blkif *rg, const struct blkif_msg *m)
{
	struct bks_error err = {0};
	struct blkif_slot *s;
	int st;

	rg->stats.requests++;
	st = check_request(rg, m, &err);
	if (st != BKS_BLKIF_RSP_OKAY) {
		refuse(rg, m->id, m->rsp_op, st, &err);
		return;
	}
	s = rg->free_slots;
	if (!s) {
		/* Cannot happen: ring_prod() bounds what is unanswered. */
		bks_error_setmsg(&err, EBUSY, "no free slot");
		refuse(rg, m->id, m->rsp_op, BKS_BLKIF_RSP_ERROR, &err);
		return;
	}
	rg->free_slots = s->next;
	slot_start(s, m);
}
