/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to libblkstack: the padding the chain does at its entry (see
 * chain-pad.c).  chain.c embeds a struct bks_pad in every open chain and
 * calls bks_pad_take() for every request submitted at the top; the pad
 * reaches the chain back only through the struct bks_pad_ops it is given,
 * so that neither file calls the other's functions.
 */
#ifndef BLKSTACK_CHAIN_PAD_H
#define BLKSTACK_CHAIN_PAD_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/chain.h"

/*
 * What the pad needs of the chain; every op is required, arg is the
 * chain.  All are called from bks_pad_take() or from completions.
 *   issue:    submit a new request (a sub-request of the pad's, aligned)
 *             at the top layer: counted in flight, retried, completed to
 *             its done callback.
 *   resubmit: submit a request bks_pad_take() took (already counted in
 *             flight) at the top layer, as it is: it is aligned and may go
 *             now.  Its completion reaches its submitter.
 *   finish:   a request bks_pad_take() took is finished with result (0 or
 *             -errno): stop counting it and call its done callback.
 *   info:     the chain's info now (its top layer's).
 *   granted:  see below.
 */
struct bks_pad_ops {
	void (*issue)(void *arg, struct bks_req *req);
	void (*resubmit)(void *arg, struct bks_req *req);
	void (*finish)(void *arg, struct bks_req *req, int result);
	const struct bks_info *(*info)(void *arg);
	/*
	 * granted: the lock whose place is req (bks_pad_lock()) holds its
	 * range now; called inside bks_pad_lock() or from the pad's
	 * deferred call.
	 */
	void (*granted)(void *arg, struct bks_req *req);
};

struct bks_pad_slot;

/* A list of requests, through their pad_prev/pad_next fields. */
struct bks_pad_list {
	struct bks_req *head, *tail;
};

struct bks_pad {
	const struct bks_pad_ops *ops;
	void *arg;
	const struct bks_info *info; /* the chain's, at the last take */
	uint32_t bs;		     /* its block size */
	uint32_t stride;	/* of a bounce block: the largest block size */
	struct bks_defer defer; /* starts waiters, outside completions */

	struct bks_pad_slot *slots; /* nslots, with their bounce blocks */
	struct bks_pad_slot *free;
	unsigned int nslots, nfree;
	unsigned char *bounce;

	struct bks_pad_list active; /* writes in the chain */
	struct bks_pad_list wait;   /* taken, not started yet: arrival order */
	unsigned int active_rmw;    /* read-modify-writes among active */
	unsigned int wait_slot;	    /* waiters that need a slot */

	struct bks_pad_stats stats;

	/* The chain's write watches (chain-lock.c keeps the list). */
	struct bks_write_watch *watches;
};

/*
 * Set up pad for a chain of block size bs, with deferred calls on loop.
 * Allocates the slots and their bounce blocks.  Returns 0 or -ENOMEM.
 */
int bks_pad_init(struct bks_pad *pad, const struct bks_pad_ops *ops, void *arg,
		 struct bks_loop *loop, uint32_t bs);

/* Free what bks_pad_init() allocated (if it ran); nothing in flight. */
void bks_pad_fini(struct bks_pad *pad);

/*
 * Called by the chain for every request submitted at its top, before the
 * request goes down.  Returns false when the chain should pass req down
 * itself (it is aligned and waits for nothing), true when the pad has
 * taken it: the pad then resubmits or finishes it later through its ops.
 */
bool bks_pad_take(struct bks_pad *pad, struct bks_req *req);

/*
 * Called by the chain when a request that went down as it is (passed, or
 * resubmitted) has finished, retries done, before its submitter hears.
 */
void bks_pad_done(struct bks_pad *pad, struct bks_req *req, int result);

/*
 * A range lock's place (chain-lock.c): req (the lock's own, never
 * submitted) joins the writes as one of the blocks [a, b) that conflicts
 * with every write it overlaps: it waits, in arrival order, for those in
 * the chain or waiting before it, and the overlapping writes that come
 * after it wait for it until bks_pad_unlock().  ops->granted(arg, req)
 * says when it holds the range.  A write's watches are told of its end.
 */
void bks_pad_lock(struct bks_pad *pad, struct bks_req *req, uint64_t a,
		  uint64_t b);

/* Withdraw the lock (held or waiting); the writes it held may go. */
void bks_pad_unlock(struct bks_pad *pad, struct bks_req *req);

#endif /* BLKSTACK_CHAIN_PAD_H */
