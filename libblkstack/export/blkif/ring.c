/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export: the shared ring itself.  The guest writes
 * req_prod and the request entries and may change any of them at any
 * moment; we write rsp_prod, req_event and the response entries.  Every
 * index is read once into a local, checked, and followed by a barrier
 * before the entries it covers are read; an entry is copied out whole
 * and only the copy is decoded (xen-blkback's rule).  The private
 * indices (req_cons, rsp_prod_pvt) never leave our memory.  See
 * internal.h.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

static uint32_t idx_load(const struct bks_blkif *rg, size_t off)
{
	const uint32_t *p = (const uint32_t *)(const void *)(rg->sring + off);

	return __atomic_load_n(p, __ATOMIC_RELAXED);
}

static void idx_store(struct bks_blkif *rg, size_t off, uint32_t v)
{
	uint32_t *p = (uint32_t *)(void *)(rg->sring + off);

	__atomic_store_n(p, v, __ATOMIC_RELAXED);
}

static unsigned char *entry(const struct bks_blkif *rg, uint32_t idx)
{
	return rg->sring + RING_HDR_SIZE +
	       (size_t)(idx & (rg->nr_ents - 1)) * rg->lay->entry;
}

void ring_attach(struct bks_blkif *rg)
{
	size_t room =
	    ((size_t)BKS_BLKIF_PAGE_SIZE << rg->order) - RING_HDR_SIZE;
	unsigned int n = (unsigned int)(room / rg->lay->entry);

	/* As many entries as fit, rounded down to a power of two. */
	rg->nr_ents = 1;
	while (rg->nr_ents * 2 <= n)
		rg->nr_ents *= 2;
	/* Take over where the frontend's responses end (a fresh ring: 0). */
	rg->rsp_prod_pvt = idx_load(rg, RING_RSP_PROD);
	rg->req_cons = rg->rsp_prod_pvt;
	rg->rsp_pushed = rg->rsp_prod_pvt;
}

int ring_prod(struct bks_blkif *rg, uint32_t *prod, struct bks_error *err)
{
	uint32_t rp = idx_load(rg, RING_REQ_PROD);

	/*
	 * Unanswered requests (req_prod - rsp_prod_pvt) can never exceed
	 * the ring: more would mean the guest overwrote entries we have
	 * not answered.  And req_prod never goes back behind what we took
	 * (req_prod - req_cons, unsigned, would be huge): between the two
	 * lies a req_prod within the ring of our responses but behind
	 * req_cons, which the first check alone lets through.
	 */
	if (rp - rg->rsp_prod_pvt > rg->nr_ents)
		return bks_error_setmsg(err, EPROTO,
					"blkif: req_prod %u is %u past the "
					"responses (%u), the ring holds %u",
					rp, rp - rg->rsp_prod_pvt,
					rg->rsp_prod_pvt, rg->nr_ents);
	if (rp - rg->req_cons > rg->nr_ents)
		return bks_error_setmsg(err, EPROTO,
					"blkif: req_prod %u went back behind "
					"the requests taken (%u)",
					rp, rg->req_cons);
	/* Read the entries only after the index that covers them. */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	*prod = rp;
	return 0;
}

void ring_peek(const struct bks_blkif *rg, unsigned char *e)
{
	memcpy(e, entry(rg, rg->req_cons), rg->lay->entry);
	/*
	 * A compiler barrier: what is decided from here on reads the copy,
	 * never the shared entry again (no double fetch).
	 */
	__atomic_signal_fence(__ATOMIC_SEQ_CST);
}

bool ring_final_check(struct bks_blkif *rg)
{
	idx_store(rg, RING_REQ_EVENT, rg->req_cons + 1);
	/* The guest sees req_event before we look at req_prod again. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return idx_load(rg, RING_REQ_PROD) != rg->req_cons;
}

void ring_respond(struct bks_blkif *rg, uint64_t id, uint8_t op, int16_t status)
{
	abi_encode_rsp(rg->lay, entry(rg, rg->rsp_prod_pvt), id, op, status);
	rg->rsp_prod_pvt++;
}

bool ring_push(struct bks_blkif *rg)
{
	/* Ours, not the page's: the guest may scribble on rsp_prod. */
	uint32_t old = rg->rsp_pushed, now = rg->rsp_prod_pvt;

	if (old == now)
		return false;
	/* The guest sees the responses before the index. */
	__atomic_thread_fence(__ATOMIC_RELEASE);
	idx_store(rg, RING_RSP_PROD, now);
	rg->rsp_pushed = now;
	/* ... and the index before we read its rsp_event. */
	__atomic_thread_fence(__ATOMIC_SEQ_CST);
	return (uint32_t)(now - idx_load(rg, RING_RSP_EVENT)) <
	       (uint32_t)(now - old);
}
