/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The data path of the chain framework: the checks every request passes
 * at every layer boundary, completion frames, per-layer accounting,
 * splitting requests above a layer's limits, block status, and the
 * chain's entry point with its retry.  See include/blkstack/driver.h and
 * chain.h.
 */
#include <errno.h>
#include <limits.h>
#include <string.h>

#include "chain-internal.h"

static const char *const op_names[] = {
    [BKS_OP_READ] = "read",
    [BKS_OP_WRITE] = "write",
    [BKS_OP_FLUSH] = "flush",
    [BKS_OP_DISCARD] = "discard",
    [BKS_OP_WRITE_ZEROES] = "write-zeroes",
    [BKS_OP_BLOCK_STATUS] = "block-status",
};

const char *bks_op_name(enum bks_op op)
{
	return (unsigned int)op <= BKS_OP_BLOCK_STATUS ? op_names[op]
						       : "unknown";
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

/* Block status: bounds only (it is not block-granular), and room. */
static int check_block_status(const struct bks_info *info,
			      const struct bks_req *req)
{
	if (!req->extents || req->extents_max == 0 || req->flags)
		return -EINVAL;
	if (req->len == 0 || req->offset > info->size ||
	    req->len > info->size - req->offset)
		return -EINVAL;
	return 0;
}

/*
 * Is req acceptable to layer l?  The one place where requests are checked
 * against a layer's info: every layer boundary goes through here.
 */
static int check(const struct bks_layer *l, const struct bks_req *req)
{
	const struct bks_info *info = &l->info;
	uint64_t total = 0;

	if (req->op == BKS_OP_BLOCK_STATUS)
		return check_block_status(info, req);
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

static struct bks_op_stats *op_stats(struct bks_layer *l, enum bks_op op)
{
	return op == BKS_OP_BLOCK_STATUS ? &l->stats.block_status
					 : &l->stats.op[op];
}

/* A block status answer a driver got wrong is never handed on. */
static bool bad_extents(const struct bks_req *req)
{
	return req->nextents == 0 || req->nextents > req->extents_max ||
	       req->extents[0].offset != req->offset;
}

/* The accounting frame every layer gets for every request it sees. */
static int account(struct bks_req *req, int result, void *arg)
{
	struct bks_layer *l = arg;
	struct bks_op_stats *st = op_stats(l, req->op);

	if (req->op == BKS_OP_BLOCK_STATUS && result == 0 && bad_extents(req))
		result = -EIO;
	l->stats.in_flight--;
	st->ops++;
	if (result < 0)
		st->errors++;
	else
		st->bytes += req->len;
	return result;
}

typedef int op_fn(void *state, struct bks_layer *self, struct bks_req *req);

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
	case BKS_OP_BLOCK_STATUS:
		return drv->block_status;
	default:
		return NULL;
	}
}

/* Call l's op for a checked, accounted req (or pass it down). */
static void call_op(struct bks_layer *l, struct bks_req *req)
{
	op_fn *fn = driver_op(l->drv, req->op);
	int rc;

	if (!fn) {
		struct bks_layer *file = l->child[BKS_CHILD_FILE];

		/* A filter without the op passes it down unchanged. */
		if (l->drv->kind == BKS_FILTER && file) {
			chain_layer_submit(file, req);
			return;
		}
		if (req->op == BKS_OP_BLOCK_STATUS) {
			/* A sink that knows no holes: all data. */
			req->extents[0].offset = req->offset;
			req->extents[0].length = req->len;
			req->extents[0].flags = 0;
			req->extents[0].depth = 1;
			req->nextents = 1;
			bks_req_complete(req, 0);
			return;
		}
		bks_req_complete(req, -EOPNOTSUPP);
		return;
	}
	rc = fn(l->state, l, req);
	if (rc < 0)
		bks_req_complete(req, rc);
}

/* ---- splitting ----------------------------------------------------------- */

/* The largest piece of op at l, a multiple of the block; 0: no limit. */
static uint64_t split_limit(const struct bks_layer *l, enum bks_op op)
{
	uint64_t lim = 0;

	if (op == BKS_OP_DISCARD)
		lim = l->info.max_discard;
	else if (op == BKS_OP_WRITE_ZEROES)
		lim = l->info.max_write_zeroes;
	if (!lim)
		return 0;
	lim -= lim % l->info.block_size;
	return lim ? lim : l->info.block_size;
}

static void split_issue(struct bks_layer *l, struct bks_req *parent,
			struct bks_req *piece);

/* A piece's split_state: being issued, or done while being issued. */
enum {
	SPLIT_ASYNC,
	SPLIT_ISSUING,
	SPLIT_DONE_INSIDE
};

/* The last piece is done, or one failed: the parent completes. */
static void split_finish(struct bks_layer *l, struct bks_req *parent,
			 struct bks_req *piece, int result)
{
	subpool_put(l, &l->split, piece);
	bks_req_complete(parent, result);
}

/*
 * A piece is done.  Done inside its own issue (a layer that completes
 * before its op returns): split_issue() goes on in its loop, so that a
 * request of many pieces never recurses once per piece.  Done later: the
 * next piece reuses it, in order, until the range is done or a piece
 * failed.
 */
static void split_piece_done(struct bks_req *piece, int result)
{
	struct bks_req *parent = piece->split_parent;
	struct bks_layer *l = piece->subreq_layer;

	if (piece->split_state == SPLIT_ISSUING) {
		piece->split_state = SPLIT_DONE_INSIDE;
		piece->split_result = result;
		return;
	}
	if (result < 0 || parent->split_pos >= parent->split_end) {
		split_finish(l, parent, piece, result);
		return;
	}
	split_issue(l, parent, piece);
}

static void split_issue(struct bks_layer *l, struct bks_req *parent,
			struct bks_req *piece)
{
	uint64_t lim = split_limit(l, parent->op);

	for (;;) {
		uint64_t left = parent->split_end - parent->split_pos;

		piece->nframes = 0;
		piece->op = parent->op;
		piece->flags = parent->flags;
		piece->offset = parent->split_pos;
		piece->len = left < lim ? left : lim;
		piece->done = split_piece_done;
		piece->opaque = NULL;
		piece->split_parent = parent;
		piece->split_state = SPLIT_ISSUING;
		parent->split_pos += piece->len;
		call_op(l, piece);
		if (piece->split_state == SPLIT_ISSUING) {
			piece->split_state = SPLIT_ASYNC; /* done later */
			return;
		}
		if (piece->split_result < 0 ||
		    parent->split_pos >= parent->split_end) {
			split_finish(l, parent, piece, piece->split_result);
			return;
		}
	}
}

static void split_resume(struct bks_layer *l, struct bks_req *parent)
{
	struct bks_req *piece = subpool_get(l, &l->split);

	if (!piece) {
		subpool_wait(&l->split, parent, split_resume);
		return;
	}
	split_issue(l, parent, piece);
}

/* ---- submission ---------------------------------------------------------- */

/* Give req to layer l: check, account, split, and call the op. */
void chain_layer_submit(struct bks_layer *l, struct bks_req *req)
{
	int rc;

	if (!l) { /* a missing child: a driver bug */
		bks_req_complete(req, -ENXIO);
		return;
	}
	/* Invalid ops have no counters: refuse before accounting. */
	if ((unsigned int)req->op > BKS_OP_BLOCK_STATUS) {
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
	if (split_limit(l, req->op) && req->len > split_limit(l, req->op)) {
		l->stats.split++;
		req->split_pos = req->offset;
		req->split_end = req->offset + req->len;
		split_resume(l, req);
		return;
	}
	call_op(l, req);
}

int bks_next_submit(struct bks_layer *next, struct bks_req *req)
{
	chain_layer_submit(next, req);
	return 0;
}

int bks_next_submit_hook(struct bks_layer *next, struct bks_req *req,
			 bks_req_hook_fn *hook, void *arg)
{
	/* Leave room for the accounting frame of the layer below. */
	if (req->nframes + 1 >= BKS_REQ_MAX_FRAMES)
		return -ENOSPC;
	push_frame(req, hook, arg);
	chain_layer_submit(next, req);
	return 0;
}

/* ---- the age list: top requests in flight, oldest first ------------------ */

/* req enters the chain at the top: it is the newest in flight. */
static void age_add(struct bks_chain *chain, struct bks_req *req)
{
	req->submit_ns = bks_now_ns();
	req->age_next = NULL;
	req->age_prev = chain->age_tail;
	if (chain->age_tail)
		chain->age_tail->age_next = req;
	else
		chain->age_head = req;
	chain->age_tail = req;
	req->age_listed = true;
}

/* req leaves (a top request done; anything else is not listed). */
static void age_del(struct bks_chain *chain, struct bks_req *req)
{
	if (!req->age_listed)
		return;
	if (req->age_prev)
		req->age_prev->age_next = req->age_next;
	else
		chain->age_head = req->age_next;
	if (req->age_next)
		req->age_next->age_prev = req->age_prev;
	else
		chain->age_tail = req->age_prev;
	req->age_prev = req->age_next = NULL;
	req->age_listed = false;
}

/* ---- block status -------------------------------------------------------- */

bool bks_next_has_extents(const struct bks_layer *layer)
{
	for (; layer; layer = layer->child[BKS_CHILD_FILE]) {
		if (layer->drv->block_status)
			return true;
		if (layer->drv->kind == BKS_SINK)
			return false;
	}
	return false;
}

bool bks_chain_has_extents(const struct bks_chain *chain)
{
	return bks_next_has_extents(chain->top);
}

static void ext_done(struct bks_req *req, int result)
{
	struct bks_chain *chain = req->opaque;

	chain->ext_result = result;
	chain->ext_busy = false;
	age_del(chain, req);
	chain->in_flight--;
	chain_check_drained(chain);
}

int bks_chain_extents(struct bks_chain *chain, uint64_t offset, uint64_t len,
		      struct bks_extent *out, size_t max, size_t *n)
{
	struct bks_req *req = &chain->ext_req;

	*n = 0;
	if (chain->ext_busy)
		return -EBUSY;
	if (max == 0)
		return -EINVAL;
	memset(req, 0, sizeof(*req));
	req->op = BKS_OP_BLOCK_STATUS;
	req->offset = offset;
	req->len = len;
	req->extents = chain->ext_buf;
	req->extents_max =
	    max < BKS_CHAIN_EXTENTS_MAX ? (uint32_t)max : BKS_CHAIN_EXTENTS_MAX;
	req->done = ext_done;
	req->opaque = chain;
	req->chain = chain;
	chain->ext_busy = true;
	chain->in_flight++;
	age_add(chain, req);
	chain_layer_submit(chain->top, req);
	if (chain->ext_busy)
		return -EWOULDBLOCK;
	if (chain->ext_result < 0)
		return chain->ext_result;
	memcpy(out, chain->ext_buf, req->nextents * sizeof(*out));
	*n = req->nextents;
	return 0;
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
	push_frame(req, chain_done, chain); /* nframes is 0 here */
	chain_layer_submit(chain->top, req);
}

static void retry_fire(struct bks_timer *t)
{
	struct bks_req *req = t->opaque;

	req->nframes = 0;
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
	bks_pad_done(&chain->pad, req, result);
	age_del(chain, req);
	chain->in_flight--;
	chain_check_drained(chain);
	return result;
}

/* Count req in flight and pass it down, below the padding. */
static void chain_issue(void *arg, struct bks_req *req)
{
	struct bks_chain *chain = arg;

	req->nframes = 0;
	req->attempts = 0;
	req->chain = chain;
	req->age_listed = false; /* a padding step, not a top request */
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

	age_del(chain, req);
	chain->in_flight--;
	chain_check_drained(chain);
	req->done(req, result);
}

static const struct bks_info *pad_info(void *arg)
{
	return bks_chain_info(arg);
}

const struct bks_pad_ops chain_pad_ops = {
    .issue = chain_issue,
    .resubmit = pad_resubmit,
    .finish = pad_finish,
    .info = pad_info,
    .granted = chain_lock_granted,
};

/* A request from the top: padded (chain-pad.c), or passed down. */
void chain_start(struct bks_chain *chain, struct bks_req *req)
{
	req->nframes = 0;
	req->attempts = 0;
	req->chain = chain;
	chain->in_flight++;
	age_add(chain, req);
	if (!bks_pad_take(&chain->pad, req))
		chain_resubmit(chain, req);
}

size_t bks_chain_buf_skew(const struct bks_chain *chain, uint64_t offset)
{
	return (size_t)(offset % bks_chain_info(chain)->block_size);
}

void bks_chain_pad_stats(const struct bks_chain *chain,
			 struct bks_pad_stats *out)
{
	*out = chain->pad.stats;
}

int bks_chain_submit(struct bks_chain *chain, struct bks_req *req)
{
	req->chain = chain;
	if (chain->drain_depth) {
		req->park_next = NULL;
		if (chain->park_tail)
			chain->park_tail->park_next = req;
		else
			chain->park_head = req;
		chain->park_tail = req;
		chain->parked++;
		chain->parked_total++;
		return 0;
	}
	chain_start(chain, req);
	return 0;
}

void bks_chain_set_retry(struct bks_chain *chain,
			 const struct bks_retry_policy *policy)
{
	static const struct bks_retry_policy none = {.max_attempts = 1};

	chain->retry = policy ? *policy : none;
	if (chain->retry.max_attempts == 0)
		chain->retry.max_attempts = 1;
}
