/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to the chain framework (libblkstack/chain-*.c, subreq.c): what a
 * layer and a chain are, and the calls between the framework's files.
 * Drivers and programs see only chain.h and driver.h.
 */
#ifndef BLKSTACK_CHAIN_INTERNAL_H
#define BLKSTACK_CHAIN_INTERNAL_H

#include "blkstack/chain.h"
#include "chain-pad.h"

/* Pieces of split requests in flight at once, per layer with limits. */
#define BKS_SPLIT_POOL 4
/* Extents bks_chain_extents() asks for at most. */
#define BKS_CHAIN_EXTENTS_MAX 256

/* A pool of sub-requests, with the requests waiting for one. */
struct subpool {
	struct bks_req *reqs;
	unsigned char *data; /* size * data_size bytes */
	struct bks_req *free;
	unsigned int size, in_use;
	struct bks_req *wait_head, *wait_tail;
};

struct bks_layer {
	const struct bks_driver *drv;
	void *state;
	struct bks_layer *child[BKS_CHILD_COUNT];
	struct bks_layer *above; /* the layer this is a child of */
	struct bks_chain *chain;
	unsigned int index; /* position in the walk, 0 = top */
	char *args;	    /* as opened or last reopened */
	bool read_only;
	bool opened;
	struct bks_info info;
	struct bks_layer_stats stats;
	struct subpool subs;  /* the driver's (subreq_max) */
	struct subpool split; /* the framework's, for splitting */
	uint64_t busy;	      /* busy references */
	/*
	 * Its drain_begin op ran and its drain_end has not yet: a layer
	 * moved between chains (chain-live.c) gets each once.
	 */
	bool drain_begun;
};

struct drain_waiter {
	void (*fn)(void *arg);
	void *arg;
};

struct bks_chain {
	struct bks_loop *loop;
	const struct bks_driver *const *extra; /* bks_chain_open_with() */
	const char *state_dir;		       /* while opening, or NULL */
	uint64_t meta_cache;		       /* bks_chain_config.meta_cache */
	enum bks_io_engine io_engine;	       /* bks_chain_config.io_engine */
	struct bks_layer *top;
	unsigned int n;
	struct bks_retry_policy retry;
	uint64_t in_flight; /* top requests */
	/* The top requests in flight, oldest first (bks_chain_oldest_ns()). */
	struct bks_req *age_head, *age_tail;
	uint64_t retries;
	uint64_t subreqs; /* in use, every layer, split pieces included */
	uint64_t busy;	  /* busy references, every layer */
	/* Drain. */
	unsigned int drain_depth;
	struct bks_req *park_head, *park_tail;
	uint64_t parked, parked_total, drains;
	struct drain_waiter waiters[BKS_DRAIN_WAITERS];
	unsigned int nwaiters;
	struct bks_defer drained_defer;
	/* bks_chain_extents(). */
	struct bks_req ext_req;
	bool ext_busy;
	int ext_result;
	struct bks_extent ext_buf[BKS_CHAIN_EXTENTS_MAX];
	/* Requests at any byte (chain-pad.c). */
	struct bks_pad pad;
};

/* chain-submit.c */
void chain_layer_submit(struct bks_layer *l, struct bks_req *req);
void chain_start(struct bks_chain *chain, struct bks_req *req);
extern const struct bks_pad_ops chain_pad_ops; /* arg: the chain */

/* chain-drain.c */
void chain_drain_init(struct bks_chain *chain);
bool chain_idle(const struct bks_chain *chain);
void chain_check_drained(struct bks_chain *chain);
void chain_layer_drain_begin(struct bks_layer *l);

/* chain-open.c */
/*
 * The driver of desc: one of the chain's extra drivers, a built-in one, or
 * a module's, loaded (driver-module.h).  0 with *out set, or -errno with
 * err naming the layer (idx, from 0) and what failed.
 */
int chain_driver_of(const struct bks_chain *chain, unsigned int idx,
		    const struct bks_driver_desc *desc,
		    const struct bks_driver **out, struct bks_error *err);
struct bks_chain *chain_alloc(struct bks_loop *loop,
			      const struct bks_driver *const *extra);
void chain_free(struct bks_chain *chain); /* the chain, not its layers */
void layer_close_tree(struct bks_layer *l);
int layer_info(struct bks_layer *l, struct bks_error *err);
struct bks_layer *layer_walk_next(struct bks_layer *l, struct bks_layer *root);
void chain_renumber(struct bks_chain *chain);

/* chain-lock.c: the pad's granted op (arg: the chain). */
void chain_lock_granted(void *arg, struct bks_req *req);

/* chain-reopen.c */
int chain_infos_up(struct bks_layer *l, struct bks_error *err);
unsigned int chain_count_tree(const struct bks_layer *l);

/* subreq.c */
int subpool_init(struct subpool *p, unsigned int size, size_t data_size);
void subpool_free(struct subpool *p);
struct bks_req *subpool_get(struct bks_layer *l, struct subpool *p);
void subpool_put(struct bks_layer *l, struct subpool *p, struct bks_req *req);
void subpool_wait(struct subpool *p, struct bks_req *req,
		  void (*fn)(struct bks_layer *self, struct bks_req *req));

#endif /* BLKSTACK_CHAIN_INTERNAL_H */
