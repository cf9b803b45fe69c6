/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Requests allocated up front: a layer's sub-requests (the driver's own
 * I/O and the framework's split pieces), waiting for one, joins, and the
 * submitters' request pools.  Nothing here allocates on the data path.
 * See include/blkstack/driver.h and chain.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chain-internal.h"

/* ---- sub-request pools --------------------------------------------------- */

int subpool_init(struct subpool *p, unsigned int size, size_t data_size)
{
	memset(p, 0, sizeof(*p));
	p->reqs = calloc(size, sizeof(*p->reqs));
	if (!p->reqs)
		return -ENOMEM;
	if (data_size) {
		p->data = calloc(size, data_size);
		if (!p->data) {
			free(p->reqs);
			p->reqs = NULL;
			return -ENOMEM;
		}
	}
	p->size = size;
	for (unsigned int i = size; i-- > 0;) {
		p->reqs[i].subreq_data =
		    p->data ? p->data + i * data_size : NULL;
		p->reqs[i].park_next = p->free;
		p->free = &p->reqs[i];
	}
	return 0;
}

void subpool_free(struct subpool *p)
{
	free(p->reqs);
	free(p->data);
	memset(p, 0, sizeof(*p));
}

struct bks_req *subpool_get(struct bks_layer *l, struct subpool *p)
{
	struct bks_req *req = p->free;
	void *data;

	if (!req)
		return NULL;
	p->free = req->park_next;
	data = req->subreq_data;
	memset(req, 0, sizeof(*req));
	req->subreq_data = data;
	req->subreq_layer = l;
	req->chain = l->chain;
	p->in_use++;
	l->stats.subreqs++;
	l->chain->subreqs++;
	return req;
}

void subpool_put(struct bks_layer *l, struct subpool *p, struct bks_req *req)
{
	struct bks_req *w = p->wait_head;

	req->park_next = p->free;
	p->free = req;
	p->in_use--;
	l->stats.subreqs--;
	l->chain->subreqs--;
	if (w) {
		p->wait_head = w->wait_next;
		if (!p->wait_head)
			p->wait_tail = NULL;
		w->wait_next = NULL;
		w->wait_fn(l, w);
	}
	chain_check_drained(l->chain);
}

void subpool_wait(struct subpool *p, struct bks_req *req,
		  void (*fn)(struct bks_layer *self, struct bks_req *req))
{
	req->wait_fn = fn;
	req->wait_next = NULL;
	if (p->wait_tail)
		p->wait_tail->wait_next = req;
	else
		p->wait_head = req;
	p->wait_tail = req;
}

struct bks_req *bks_subreq_get(struct bks_layer *self)
{
	return subpool_get(self, &self->subs);
}

void bks_subreq_put(struct bks_layer *self, struct bks_req *sub)
{
	subpool_put(self, &self->subs, sub);
}

void *bks_subreq_data(struct bks_req *sub)
{
	return sub->subreq_data;
}

void bks_subreq_wait(struct bks_layer *self, struct bks_req *req,
		     void (*fn)(struct bks_layer *self, struct bks_req *req))
{
	subpool_wait(&self->subs, req, fn);
}

/* ---- joins --------------------------------------------------------------- */

void bks_join_init(struct bks_join *join,
		   void (*done)(struct bks_join *join, int result), void *arg)
{
	join->pending = 1;
	join->result = 0;
	join->done = done;
	join->arg = arg;
}

void bks_join_add(struct bks_join *join)
{
	join->pending++;
}

void bks_join_put(struct bks_join *join, int result)
{
	if (result < 0 && join->result == 0)
		join->result = result;
	if (--join->pending == 0)
		join->done(join, join->result);
}

/* ---- request pools ------------------------------------------------------- */

int bks_req_pool_init(struct bks_req_pool *pool, unsigned int size)
{
	memset(pool, 0, sizeof(*pool));
	pool->reqs = calloc(size, sizeof(*pool->reqs));
	if (!pool->reqs)
		return -ENOMEM;
	pool->size = size;
	for (unsigned int i = size; i-- > 0;) {
		pool->reqs[i].pool_next = pool->free;
		pool->free = &pool->reqs[i];
	}
	return 0;
}

void bks_req_pool_free(struct bks_req_pool *pool)
{
	free(pool->reqs);
	memset(pool, 0, sizeof(*pool));
}

struct bks_req *bks_req_get(struct bks_req_pool *pool)
{
	struct bks_req *req = pool->free;

	if (!req)
		return NULL;
	pool->free = req->pool_next;
	memset(req, 0, sizeof(*req));
	pool->in_use++;
	return req;
}

void bks_req_put(struct bks_req_pool *pool, struct bks_req *req)
{
	req->pool_next = pool->free;
	pool->free = req;
	pool->in_use--;
}
