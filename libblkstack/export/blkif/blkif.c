/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export: the public functions and the export ops.  The
 * intake takes what the guest put on the ring (from bks_blkif_kick(), the
 * event channel's callback, and from the deferred call when it had to
 * stop), and the deferred call pushes the responses, notifies the guest,
 * and finishes a shutdown.  See internal.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "internal.h"

/* The ring broke: take nothing more from it, answer nothing more on it. */
static void ring_break(struct bks_blkif *rg, const struct bks_error *why)
{
	if (rg->broken)
		return;
	rg->broken = true;
	rg->why = *why;
	rg->stats.dropped++;
	if (rg->broken_fn)
		rg->broken_fn(rg->arg, &rg->why);
}

/*
 * Take requests until the ring is empty (then ask for an event at the
 * next one), or until an indirect request finds no buffer (then the
 * deferred call resumes when one comes back), at most a ring's worth per
 * call (then the deferred call goes on, after the loop's other work).
 */
static void intake(struct bks_blkif *rg)
{
	unsigned char e[RING_ENTRY_MAX];
	struct bks_error err = {0};
	struct blkif_msg m;
	unsigned int taken = 0;
	uint32_t prod;

	if (!rg->started || rg->stopping || rg->broken || rg->in_intake)
		return;
	rg->in_intake = true;
	rg->stalled = false;
	for (;;) {
		if (ring_prod(rg, &prod, &err) < 0) {
			ring_break(rg, &err);
			goto out;
		}
		while (rg->req_cons != prod) {
			if (taken++ == rg->nr_ents) {
				rg->more = true;
				goto out;
			}
			ring_peek(rg, e);
			abi_decode(rg->lay, e, &m);
			if (m.op == BKS_BLKIF_OP_INDIRECT &&
			    !io_big_available(rg)) {
				/* Left on the ring, copied again later. */
				rg->stalled = true;
				goto out;
			}
			rg->req_cons++;
			io_request(rg, &m);
			if (rg->broken)
				goto out;
		}
		if (!ring_final_check(rg))
			break;
	}
out:
	rg->in_intake = false;
	bks_defer_schedule(&rg->defer);
}

static void on_defer(struct bks_defer *d)
{
	struct bks_blkif *rg = d->opaque;
	struct bks_error err = {0};
	int rc;

	if (!rg->broken && ring_push(rg)) {
		rc = rg->ops->notify(rg->ops_state);
		if (rc < 0) {
			bks_error_set(&err, -rc, "blkif: %s: notify",
				      rg->ops->name);
			ring_break(rg, &err);
		}
	}
	if (rg->more || (rg->stalled && io_big_available(rg))) {
		rg->more = false;
		intake(rg);
	}
	if (rg->stopping && rg->in_flight == 0 && !rg->done_sent) {
		rg->done_sent = true;
		if (rg->done)
			rg->done(rg->done_arg);
	}
}

void bks_blkif_kick(struct bks_blkif *rg)
{
	intake(rg);
}

bool bks_blkif_broken(const struct bks_blkif *rg, struct bks_error *why)
{
	if (rg->broken && why)
		*why = rg->why;
	return rg->broken;
}

void bks_blkif_get_features(const struct bks_blkif *rg,
			    struct bks_blkif_features *out)
{
	*out = rg->feat;
}

unsigned int bks_blkif_ring_size(const struct bks_blkif *rg)
{
	return rg->nr_ents;
}

const char *bks_blkif_last_error(const struct bks_blkif *rg)
{
	return rg->last.msg;
}

struct bks_export *bks_blkif_export(struct bks_blkif *rg)
{
	return &rg->exp;
}

/* ---- the export ops ------------------------------------------------------ */

static int blkif_start(void *state, struct bks_error *err)
{
	struct bks_blkif *rg = state;

	(void)err;
	rg->started = true;
	/* Whatever the frontend queued before we came. */
	intake(rg);
	return 0;
}

static void blkif_shutdown(void *state, void (*done)(void *arg), void *arg)
{
	struct bks_blkif *rg = state;

	/*
	 * Take no more; what is in the chain is still answered.  A second
	 * call gets its own done, as the NBD export's does.
	 */
	rg->stopping = true;
	rg->done = done;
	rg->done_arg = arg;
	rg->done_sent = false;
	bks_defer_schedule(&rg->defer);
}

static void blkif_stats(void *state, struct bks_export_stats *out)
{
	struct bks_blkif *rg = state;

	*out = rg->stats;
	out->connections = !rg->broken && rg->started && !rg->stopping;
}

static void blkif_free(void *state)
{
	struct bks_blkif *rg = state;

	bks_defer_cancel(&rg->defer);
	io_free(rg);
	free(rg);
}

static const struct bks_export_ops blkif_export_ops = {
    .name = "blkif",
    .start = blkif_start,
    .shutdown = blkif_shutdown,
    .stats = blkif_stats,
    .free = blkif_free,
};

static int check_config(const struct bks_blkif_config *cfg,
			struct bks_error *err)
{
	const struct bks_blkif_grant_ops *ops = cfg->ops;

	if (!cfg->loop || !cfg->chain || !cfg->sring || !ops)
		return bks_error_setmsg(err, EINVAL,
					"blkif: loop, chain, ring and ops are "
					"required");
	if (!ops->name || !ops->notify || (!ops->copy && !ops->map) ||
	    (ops->map && !ops->unmap))
		return bks_error_setmsg(err, EINVAL,
					"blkif: grant ops need a name, notify, "
					"and copy or map with unmap");
	if (cfg->ring_order > BKS_BLKIF_MAX_RING_ORDER)
		return bks_error_setmsg(err, EINVAL,
					"blkif: ring-page-order %u is above "
					"the %u advertised",
					cfg->ring_order,
					BKS_BLKIF_MAX_RING_ORDER);
	if (cfg->max_indirect > BKS_BLKIF_INDIRECT_LIMIT)
		return bks_error_setmsg(err, EINVAL,
					"blkif: %u indirect segments is above "
					"the protocol's %u",
					cfg->max_indirect,
					BKS_BLKIF_INDIRECT_LIMIT);
	return 0;
}

int bks_blkif_new(struct bks_blkif **out, const struct bks_blkif_config *cfg,
		  struct bks_error *err)
{
	struct bks_blkif *rg = NULL;
	int rc;

	*out = NULL;
	rc = check_config(cfg, err);
	if (rc < 0)
		goto out;
	rg = calloc(1, sizeof(*rg));
	if (!rg) {
		rc = bks_error_set(err, ENOMEM, "blkif: state");
		goto out;
	}
	rg->chain = cfg->chain;
	rg->ops = cfg->ops;
	rg->ops_state = cfg->ops_state;
	rg->broken_fn = cfg->broken;
	rg->arg = cfg->arg;
	rg->sring = cfg->sring;
	rg->order = cfg->ring_order;
	rg->lay = abi_layout(cfg->abi);
	rg->block_size = bks_chain_info(cfg->chain)->block_size;
	bks_blkif_features(cfg->chain, cfg->read_only, cfg->max_indirect,
			   &rg->feat);
	ring_attach(rg);
	bks_defer_init(cfg->loop, &rg->defer, on_defer, rg);
	bks_export_init(&rg->exp, &blkif_export_ops, rg, cfg->chain);
	rc = io_init(rg,
		     cfg->big_bufs ? cfg->big_bufs : BKS_BLKIF_DEFAULT_BIG_BUFS,
		     err);
	if (rc < 0)
		goto out;
	*out = rg;
	rg = NULL;
out:
	if (rg) {
		io_free(rg);
		free(rg);
	}
	return rc;
}
