/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The chain framework: opening a chain (one open path, parents included),
 * the checks every request passes at every layer boundary, completion
 * frames, per-layer accounting, chain-level retry, and request pools.
 * See include/blkstack/chain.h and driver.h.
 */
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/chain.h"
#include "chain-pad.h"

struct bks_layer {
	const struct bks_driver *drv;
	void *state;
	struct bks_layer *next; /* below; NULL for a sink without parent */
	struct bks_chain *chain;
	unsigned int index; /* 0 = top */
	bool opened;
	struct bks_info info;
	struct bks_layer_stats stats;
};

struct bks_chain {
	struct bks_loop *loop;
	unsigned int n;
	struct bks_layer layers[BKS_CHAIN_MAX_LAYERS];
	struct bks_retry_policy retry;
	uint64_t in_flight;
	uint64_t retries;
	struct bks_pad pad; /* chain-pad.c: requests at any byte */
};

static const char *const op_names[BKS_OP_COUNT] = {
    [BKS_OP_READ] = "read",
    [BKS_OP_WRITE] = "write",
    [BKS_OP_FLUSH] = "flush",
    [BKS_OP_DISCARD] = "discard",
    [BKS_OP_WRITE_ZEROES] = "write-zeroes",
};

const char *bks_op_name(enum bks_op op)
{
	return (unsigned int)op < BKS_OP_COUNT ? op_names[op] : "unknown";
}

/* ---- layer accessors ----------------------------------------------------- */

const struct bks_driver *bks_layer_driver(const struct bks_layer *layer)
{
	return layer->drv;
}

void *bks_layer_state(struct bks_layer *layer)
{
	return layer->state;
}

unsigned int bks_layer_index(const struct bks_layer *layer)
{
	return layer->index;
}

const struct bks_info *bks_next_info(const struct bks_layer *next)
{
	return &next->info;
}

void bks_layer_get_stats(const struct bks_layer *layer,
			 struct bks_layer_stats *out)
{
	*out = layer->stats;
}

/* ---- the checks ---------------------------------------------------------- */

static bool writes(enum bks_op op)
{
	return op == BKS_OP_WRITE || op == BKS_OP_DISCARD ||
	       op == BKS_OP_WRITE_ZEROES;
}

/* Flags each op accepts. */
static uint32_t allowed_flags(enum bks_op op)
{
	switch (op) {
	case BKS_OP_WRITE:
		return BKS_REQ_FUA;
	case BKS_OP_WRITE_ZEROES:
		return BKS_REQ_FUA | BKS_REQ_NO_HOLE;
	default:
		return 0;
	}
}

/*
 * Is req acceptable to layer l?  The one place where requests are checked
 * against a layer's info: every layer boundary goes through here.
 */
static int check(const struct bks_layer *l, const struct bks_req *req)
{
	const struct bks_info *info = &l->info;
	uint64_t total = 0;

	if ((unsigned int)req->op >= BKS_OP_COUNT)
		return -EINVAL;
	/* Read-only first: EROFS says more than EOPNOTSUPP. */
	if (writes(req->op) && info->read_only)
		return -EROFS;
	if (!(info->ops & BKS_OPF(req->op)))
		return -EOPNOTSUPP;
	if (req->flags & ~allowed_flags(req->op))
		return -EINVAL;
	if ((req->flags & BKS_REQ_FUA) && !info->can_fua)
		return -EOPNOTSUPP;
	if ((req->flags & BKS_REQ_NO_HOLE) && !info->zero_no_hole)
		return -EOPNOTSUPP;
	if (req->op == BKS_OP_FLUSH)
		return req->offset || req->len ? -EINVAL : 0;
	if (req->len == 0 || req->offset % info->block_size ||
	    req->len % info->block_size)
		return -EINVAL;
	if (req->offset > info->size || req->len > info->size - req->offset)
		return req->op == BKS_OP_READ ? -EINVAL : -ENOSPC;
	if (req->op != BKS_OP_READ && req->op != BKS_OP_WRITE)
		return 0;
	if (info->max_io && req->len > info->max_io)
		return -EINVAL;
	if (!req->iov || req->iovcnt < 1 || req->iovcnt > IOV_MAX)
		return -EINVAL;
	for (int i = 0; i < req->iovcnt; i++)
		total += req->iov[i].iov_len;
	return total == req->len ? 0 : -EINVAL;
}

/* ---- frames and completion ----------------------------------------------- */

static int push_frame(struct bks_req *req, bks_req_hook_fn *fn, void *arg)
{
	if (req->nframes >= BKS_REQ_MAX_FRAMES)
		return -ENOSPC;
	req->frames[req->nframes].fn = fn;
	req->frames[req->nframes].arg = arg;
	req->nframes++;
	return 0;
}

void bks_req_complete(struct bks_req *req, int result)
{
	if (result > 0) /* a driver bug; never report it as success */
		result = -EIO;
	while (req->nframes > 0) {
		struct bks_req_frame f = req->frames[--req->nframes];

		result = f.fn(req, result, f.arg);
		if (result == BKS_REQ_HELD)
			return;
	}
	req->done(req, result);
}

/* The accounting frame every layer gets for every request it sees. */
static int account(struct bks_req *req, int result, void *arg)
{
	struct bks_layer *l = arg;
	struct bks_op_stats *st = &l->stats.op[req->op];

	l->stats.in_flight--;
	st->ops++;
	if (result < 0)
		st->errors++;
	else
		st->bytes += req->len;
	return result;
}

typedef int op_fn(void *state, struct bks_layer *next, struct bks_req *req);

static op_fn *driver_op(const struct bks_driver *drv, enum bks_op op)
{
	switch (op) {
	case BKS_OP_READ:
		return drv->read;
	case BKS_OP_WRITE:
		return drv->write;
	case BKS_OP_FLUSH:
		return drv->flush;
	case BKS_OP_DISCARD:
		return drv->discard;
	case BKS_OP_WRITE_ZEROES:
		return drv->write_zeroes;
	default:
		return NULL;
	}
}

/* Give req to layer l: check, account, and call the op (or pass down). */
static void layer_submit(struct bks_layer *l, struct bks_req *req)
{
	op_fn *fn;
	int rc;

	/* Invalid ops have no counters: refuse before accounting. */
	if ((unsigned int)req->op >= BKS_OP_COUNT) {
		bks_req_complete(req, -EINVAL);
		return;
	}
	rc = push_frame(req, account, l);
	if (rc < 0) {
		bks_req_complete(req, rc);
		return;
	}
	l->stats.in_flight++;
	rc = check(l, req);
	if (rc < 0) {
		bks_req_complete(req, rc);
		return;
	}
	fn = driver_op(l->drv, req->op);
	if (!fn) {
		/* A filter without the op passes it down unchanged. */
		if (l->drv->kind == BKS_FILTER && l->next) {
			layer_submit(l->next, req);
			return;
		}
		bks_req_complete(req, -EOPNOTSUPP);
		return;
	}
	rc = fn(l->state, l->next, req);
	if (rc < 0)
		bks_req_complete(req, rc);
}

int bks_next_submit(struct bks_layer *next, struct bks_req *req)
{
	layer_submit(next, req);
	return 0;
}

int bks_next_submit_hook(struct bks_layer *next, struct bks_req *req,
			 bks_req_hook_fn *hook, void *arg)
{
	/* Leave room for the accounting frame of the layer below. */
	if (req->nframes + 1 >= BKS_REQ_MAX_FRAMES)
		return -ENOSPC;
	push_frame(req, hook, arg);
	layer_submit(next, req);
	return 0;
}

/* ---- extents ------------------------------------------------------------ */

bool bks_next_has_extents(const struct bks_layer *next)
{
	for (; next; next = next->next) {
		if (next->drv->extents)
			return true;
		if (next->drv->kind == BKS_SINK)
			return false;
	}
	return false;
}

int bks_next_extents(struct bks_layer *next, uint64_t offset, uint64_t len,
		     struct bks_extent *out, size_t max, size_t *n)
{
	const struct bks_info *info = &next->info;
	int rc;

	*n = 0;
	if (max == 0 || len == 0 || offset > info->size ||
	    len > info->size - offset)
		return -EINVAL;
	if (!next->drv->extents) {
		if (next->drv->kind == BKS_FILTER && next->next)
			return bks_next_extents(next->next, offset, len, out,
						max, n);
		out[0].offset = offset;
		out[0].length = len;
		out[0].flags = 0;
		*n = 1;
		return 0;
	}
	rc = next->drv->extents(next->state, next->next, offset, len, out, max,
				n);
	if (rc == 0 && (*n == 0 || *n > max || out[0].offset != offset))
		return -EIO; /* a driver bug: never hand it on */
	return rc;
}

int bks_chain_extents(struct bks_chain *chain, uint64_t offset, uint64_t len,
		      struct bks_extent *out, size_t max, size_t *n)
{
	return bks_next_extents(&chain->layers[0], offset, len, out, max, n);
}

bool bks_chain_has_extents(const struct bks_chain *chain)
{
	return bks_next_has_extents(&chain->layers[0]);
}

/* ---- chain submission and retry ----------------------------------------- */

static bool default_transient(int err, void *arg)
{
	(void)arg;
	return err == -EIO || err == -EAGAIN || err == -ETIMEDOUT ||
	       err == -ENOMEM;
}

static int chain_done(struct bks_req *req, int result, void *arg);

static void chain_resubmit(struct bks_chain *chain, struct bks_req *req)
{
	req->attempts++;
	/* nframes is 0 here, or 1 with the padding's frame (chain-pad.c) */
	push_frame(req, chain_done, chain);
	layer_submit(&chain->layers[0], req);
}

static void retry_fire(struct bks_timer *t)
{
	struct bks_req *req = t->opaque;

	chain_resubmit(req->chain, req);
}

/* The bottom frame of every chain request: retry, or finish. */
static int chain_done(struct bks_req *req, int result, void *arg)
{
	struct bks_chain *chain = arg;
	const struct bks_retry_policy *p = &chain->retry;

	if (result < 0 && req->attempts < p->max_attempts &&
	    (p->transient ? p->transient(result, p->arg)
			  : default_transient(result, NULL))) {
		chain->retries++;
		bks_timer_init(chain->loop, &req->retry_timer, retry_fire, req);
		bks_timer_arm(&req->retry_timer, p->delay_ns);
		return BKS_REQ_HELD;
	}
	chain->in_flight--;
	return result;
}

/* Submit below the padding (its sub-requests, and what it lets go). */
static void chain_issue(void *arg, struct bks_req *req)
{
	struct bks_chain *chain = arg;

	req->nframes = 0;
	req->attempts = 0;
	req->chain = chain;
	chain->in_flight++;
	chain_resubmit(chain, req);
}

static void pad_resubmit(void *arg, struct bks_req *req)
{
	chain_resubmit(arg, req);
}

static void pad_finish(void *arg, struct bks_req *req, int result)
{
	struct bks_chain *chain = arg;

	chain->in_flight--;
	req->done(req, result);
}

static const struct bks_pad_ops pad_ops = {
    .issue = chain_issue,
    .resubmit = pad_resubmit,
    .finish = pad_finish,
};

int bks_chain_submit(struct bks_chain *chain, struct bks_req *req)
{
	req->nframes = 0;
	req->attempts = 0;
	req->chain = chain;
	chain->in_flight++;
	if (!bks_pad_take(&chain->pad, req))
		chain_resubmit(chain, req);
	return 0;
}

size_t bks_chain_buf_skew(const struct bks_chain *chain, uint64_t offset)
{
	return (size_t)(offset % chain->layers[0].info.block_size);
}

void bks_chain_pad_stats(const struct bks_chain *chain,
			 struct bks_pad_stats *out)
{
	*out = chain->pad.stats;
}

void bks_chain_set_retry(struct bks_chain *chain,
			 const struct bks_retry_policy *policy)
{
	static const struct bks_retry_policy none = {.max_attempts = 1};

	chain->retry = policy ? *policy : none;
	if (chain->retry.max_attempts == 0)
		chain->retry.max_attempts = 1;
}

uint64_t bks_chain_in_flight(const struct bks_chain *chain)
{
	return chain->in_flight;
}

uint64_t bks_chain_retries(const struct bks_chain *chain)
{
	return chain->retries;
}

/* ---- opening and closing ------------------------------------------------- */

/*
 * The geometry every layer must have (a driver bug otherwise, or an image
 * the driver did not check): refused with what is wrong.
 */
static int check_info(const struct bks_info *info, unsigned int idx,
		      const char *name, struct bks_error *err)
{
	uint32_t bs = info->block_size;

	if (bs < 512 || bs > 65536 || (bs & (bs - 1)) != 0)
		return bks_error_setmsg(err, EINVAL,
					"layer %u (%s): block size %u is not "
					"a power of two from 512 to 65536",
					idx + 1, name, bs);
	if (info->size == 0)
		return bks_error_setmsg(err, EINVAL,
					"layer %u (%s): the disk is empty (0 "
					"bytes)",
					idx + 1, name);
	if (info->size % bs)
		return bks_error_setmsg(err, EINVAL,
					"layer %u (%s): size %llu bytes is not "
					"a multiple of the block size %u",
					idx + 1, name,
					(unsigned long long)info->size, bs);
	return 0;
}

/* Open layer idx of chain with drv and args above next. */
static int layer_open(struct bks_chain *chain, unsigned int idx,
		      const struct bks_driver *drv, const char *args,
		      struct bks_layer *next, bool read_only,
		      struct bks_error *err)
{
	struct bks_layer *l = &chain->layers[idx];
	struct bks_open_args oa = {
	    .args = args,
	    .loop = chain->loop,
	    .read_only = read_only,
	};
	int rc;

	l->drv = drv;
	l->index = idx;
	l->chain = chain;
	l->next = next;
	if (drv->state_size) {
		l->state = calloc(1, drv->state_size);
		if (!l->state)
			return bks_error_set(err, ENOMEM, "layer %u (%s)",
					     idx + 1, drv->name);
	}
	rc = drv->open(l->state, next, &oa, err);
	if (rc < 0) {
		free(l->state);
		l->state = NULL;
		return bks_error_prepend(err, "layer %u (%s): ", idx + 1,
					 drv->name);
	}
	l->opened = true;
	/* A filter starts from the info of the layer below. */
	if (next)
		l->info = next->info;
	if (drv->info) {
		rc = drv->info(l->state, next, &l->info);
		if (rc < 0)
			return bks_error_set(err, -rc, "layer %u (%s): info",
					     idx + 1, drv->name);
	} else if (!next) {
		return bks_error_setmsg(err, EINVAL,
					"layer %u (%s): a sink without info",
					idx + 1, drv->name);
	}
	if (read_only)
		l->info.read_only = true;
	return check_info(&l->info, idx, drv->name, err);
}

/*
 * Link the parents of the sink at index bottom below it, as further
 * read-only layers, until a layer has no parent.
 */
static int open_parents(struct bks_chain *chain, unsigned int bottom,
			struct bks_error *err)
{
	struct bks_chain_spec pspec = {0};
	char *buf = NULL;
	int rc = 0;

	buf = malloc(BKS_PARENT_MAX);
	if (!buf)
		return bks_error_set(err, ENOMEM, "chain: parent");
	for (;;) {
		struct bks_layer *l = &chain->layers[bottom];

		if (!l->drv->get_parent)
			break;
		rc = l->drv->get_parent(l->state, buf, BKS_PARENT_MAX, err);
		if (rc == BKS_NO_PARENT) {
			rc = 0;
			break;
		}
		if (rc < 0) {
			bks_error_prepend(err,
					  "layer %u (%s): parent: ", bottom + 1,
					  l->drv->name);
			goto out;
		}
		if (chain->n == BKS_CHAIN_MAX_LAYERS) {
			rc = bks_error_setmsg(err, ELOOP,
					      "layer %u (%s): more than %d "
					      "layers with parents (a loop?)",
					      bottom + 1, l->drv->name,
					      BKS_CHAIN_MAX_LAYERS);
			goto out;
		}
		buf[BKS_PARENT_MAX - 1] = '\0';
		rc = bks_chain_parse(buf, strlen(buf), &pspec, err);
		if (rc == 0 && pspec.n != 1)
			rc = bks_error_setmsg(err, EINVAL,
					      "parent is not a single layer");
		if (rc < 0) {
			bks_error_prepend(err,
					  "layer %u (%s): parent: ", bottom + 1,
					  l->drv->name);
			goto out;
		}
		rc = layer_open(chain, chain->n, pspec.layers[0].driver,
				pspec.layers[0].args, NULL, true, err);
		chain->n++;
		if (rc < 0)
			goto out;
		l->next = &chain->layers[chain->n - 1];
		bottom = chain->n - 1;
		bks_chain_spec_free(&pspec);
	}
out:
	bks_chain_spec_free(&pspec);
	free(buf);
	return rc;
}

void bks_chain_close(struct bks_chain *chain)
{
	if (!chain)
		return;
	for (unsigned int i = 0; i < BKS_CHAIN_MAX_LAYERS; i++) {
		struct bks_layer *l = &chain->layers[i];

		if (l->opened && l->drv->close)
			l->drv->close(l->state);
		free(l->state);
	}
	bks_pad_fini(&chain->pad);
	free(chain);
}

int bks_chain_open(struct bks_chain **out, const char *s, struct bks_loop *loop,
		   bool read_only, struct bks_error *err)
{
	struct bks_chain_spec spec = {0};
	struct bks_chain *chain = NULL;
	unsigned int sink;
	int rc;

	*out = NULL;
	rc = bks_chain_parse(s, s ? strnlen(s, BKS_CHAIN_STR_MAX + 1) : 0,
			     &spec, err);
	if (rc < 0)
		goto out;
	chain = calloc(1, sizeof(*chain));
	if (!chain) {
		rc = bks_error_set(err, ENOMEM, "chain");
		goto out;
	}
	chain->loop = loop;
	bks_chain_set_retry(chain, NULL);
	/* The sink, then its parents below it, then the filters above. */
	sink = spec.n - 1;
	chain->n = spec.n;
	rc = layer_open(chain, sink, spec.layers[sink].driver,
			spec.layers[sink].args, NULL, read_only, err);
	if (rc < 0)
		goto out;
	rc = open_parents(chain, sink, err);
	if (rc < 0)
		goto out;
	for (unsigned int i = sink; i-- > 0;) {
		rc = layer_open(chain, i, spec.layers[i].driver,
				spec.layers[i].args, &chain->layers[i + 1],
				read_only, err);
		if (rc < 0)
			goto out;
	}
	if (bks_pad_init(&chain->pad, &pad_ops, chain, loop,
			 &chain->layers[0].info) < 0) {
		rc = bks_error_set(err, ENOMEM, "chain: padding");
		goto out;
	}
	*out = chain;
	chain = NULL;
out:
	bks_chain_close(chain);
	bks_chain_spec_free(&spec);
	return rc;
}

const struct bks_info *bks_chain_info(const struct bks_chain *chain)
{
	return &chain->layers[0].info;
}

unsigned int bks_chain_layers(const struct bks_chain *chain)
{
	return chain->n;
}

struct bks_layer *bks_chain_layer(struct bks_chain *chain, unsigned int i)
{
	return i < chain->n ? &chain->layers[i] : NULL;
}

struct bks_layer *bks_chain_find(struct bks_chain *chain, const char *name)
{
	for (unsigned int i = 0; i < chain->n; i++) {
		if (strcmp(chain->layers[i].drv->name, name) == 0)
			return &chain->layers[i];
	}
	return NULL;
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
