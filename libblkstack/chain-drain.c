/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Draining a chain: parking what arrives at the top, waiting until
 * nothing is in flight in any layer (requests, sub-requests, busy
 * references), and resubmitting the parked requests in order.  See
 * bks_chain_drain_begin() in include/blkstack/chain.h.
 */
#include <errno.h>
#include <string.h>

#include "chain-internal.h"

bool chain_idle(const struct bks_chain *chain)
{
	return chain->in_flight == 0 && chain->subreqs == 0 && chain->busy == 0;
}

/* Called whenever a count drops: schedule the drained calls if due. */
void chain_check_drained(struct bks_chain *chain)
{
	if (chain->drain_depth && chain->nwaiters && chain_idle(chain))
		bks_defer_schedule(&chain->drained_defer);
}

/* From the loop: still drained?  Then every waiting drain is told. */
static void drained_fire(struct bks_defer *d)
{
	struct bks_chain *chain = d->opaque;
	struct drain_waiter w[BKS_DRAIN_WAITERS];
	unsigned int n = chain->nwaiters;

	if (!chain->drain_depth || !chain_idle(chain))
		return;
	/* A drained call may begin or end drains: work on a copy. */
	memcpy(w, chain->waiters, n * sizeof(w[0]));
	chain->nwaiters = 0;
	for (unsigned int i = 0; i < n; i++)
		w[i].fn(w[i].arg);
}

void chain_drain_init(struct bks_chain *chain)
{
	bks_defer_init(chain->loop, &chain->drained_defer, drained_fire, chain);
}

int bks_chain_drain_begin(struct bks_chain *chain, void (*drained)(void *arg),
			  void *arg)
{
	if (drained && chain->nwaiters == BKS_DRAIN_WAITERS)
		return -EBUSY;
	chain->drains++;
	if (chain->drain_depth++ == 0) {
		for (struct bks_layer *l = chain->top; l;
		     l = layer_walk_next(l, chain->top))
			chain_layer_drain_begin(l);
	}
	if (drained) {
		chain->waiters[chain->nwaiters].fn = drained;
		chain->waiters[chain->nwaiters].arg = arg;
		chain->nwaiters++;
	}
	chain_check_drained(chain);
	return 0;
}

/* l's drain_begin op, unless it ran already (a layer that moved). */
void chain_layer_drain_begin(struct bks_layer *l)
{
	if (l->drain_begun)
		return;
	l->drain_begun = true;
	if (l->drv->drain_begin)
		l->drv->drain_begin(l->state, l);
}

/*
 * drain_end ops bottom first: the walk backwards, by recursion; only
 * where drain_begin ran.
 */
static void drain_end_ops(struct bks_layer *l)
{
	if (!l)
		return;
	drain_end_ops(l->child[BKS_CHILD_BACKING]);
	drain_end_ops(l->child[BKS_CHILD_FILE]);
	if (!l->drain_begun)
		return;
	l->drain_begun = false;
	if (l->drv->drain_end)
		l->drv->drain_end(l->state, l);
}

void bks_chain_drain_end(struct bks_chain *chain)
{
	if (chain->drain_depth == 0 || --chain->drain_depth > 0)
		return;
	chain->nwaiters = 0;
	bks_defer_cancel(&chain->drained_defer);
	drain_end_ops(chain->top);
	while (chain->drain_depth == 0 && chain->park_head) {
		struct bks_req *req = chain->park_head;

		chain->park_head = req->park_next;
		if (!chain->park_head)
			chain->park_tail = NULL;
		req->park_next = NULL;
		chain->parked--;
		chain_start(chain, req);
	}
}

bool bks_chain_is_drained(const struct bks_chain *chain)
{
	return chain->drain_depth > 0 && chain_idle(chain);
}

void bks_layer_busy_get(struct bks_layer *self)
{
	self->busy++;
	self->chain->busy++;
}

void bks_layer_busy_put(struct bks_layer *self)
{
	self->busy--;
	self->chain->busy--;
	chain_check_drained(self->chain);
}
