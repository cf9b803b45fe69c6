/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Range locks and write watches (include/blkstack/chain.h).
 *
 * Both live where the chain already orders its top writes: the padding
 * (chain-pad.c), which sees every request entering the chain and keeps
 * every write in flight on its active list.  A lock takes a place among
 * those writes (bks_pad_lock()): it is ordered against them by the same
 * conflict rule that serialises overlapping read-modify-writes, so that
 * with no lock the writes pay nothing more than they did.  A watch hangs
 * on the padding's list of watches, which it walks when a write leaves
 * the active list: with no watch, one pointer test per write.
 */
#include <errno.h>
#include <stddef.h>
#include <string.h>

#include "chain-internal.h"

static void lock_fire(struct bks_defer *d)
{
	struct bks_range_lock *lk = d->opaque;

	lk->granted(lk);
}

/* The pad's granted op: tell the owner from the loop. */
void chain_lock_granted(void *arg, struct bks_req *req)
{
	struct bks_range_lock *lk =
	    (struct bks_range_lock *)((char *)req -
				      offsetof(struct bks_range_lock, req));

	(void)arg;
	bks_defer_schedule(&lk->defer);
}

int bks_chain_lock_range(struct bks_chain *chain, struct bks_range_lock *lk)
{
	const struct bks_info *info = bks_chain_info(chain);
	uint64_t bs = info->block_size, a, b;

	if (!lk || !lk->granted || lk->len == 0 || lk->offset > info->size ||
	    lk->len > info->size - lk->offset)
		return -EINVAL;
	a = lk->offset - lk->offset % bs;
	b = lk->offset + lk->len;
	b += (bs - b % bs) % bs;
	lk->chain = chain;
	memset(&lk->req, 0, sizeof(lk->req));
	bks_defer_init(chain->loop, &lk->defer, lock_fire, lk);
	bks_pad_lock(&chain->pad, &lk->req, a, b);
	return 0;
}

void bks_chain_unlock_range(struct bks_chain *chain, struct bks_range_lock *lk)
{
	if (!lk || lk->chain != chain)
		return;
	bks_defer_cancel(&lk->defer);
	bks_pad_unlock(&chain->pad, &lk->req);
	lk->chain = NULL;
}

void bks_chain_watch_writes(struct bks_chain *chain, struct bks_write_watch *w)
{
	struct bks_write_watch **p = &chain->pad.watches;

	if (!w || !w->fn)
		return;
	/* At the tail: the watches hear in the order they came. */
	for (; *p; p = &(*p)->next) {
		if (*p == w)
			return; /* once */
	}
	w->next = NULL;
	*p = w;
}

void bks_chain_unwatch_writes(struct bks_chain *chain,
			      struct bks_write_watch *w)
{
	for (struct bks_write_watch **p = &chain->pad.watches; *p;
	     p = &(*p)->next) {
		if (*p == w) {
			*p = w->next;
			w->next = NULL;
			return;
		}
	}
}
