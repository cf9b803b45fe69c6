/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Live surgery on an open chain, for snapshot, image swap, commit and
 * stream (include/blkstack/chain.h): submitting to one layer from outside
 * the driver stack, reopening one image in another read-only mode, putting
 * an overlay above the sink, dropping images, exchanging the layer trees
 * of two chains, and writing the chain string back.  Everything but
 * bks_layer_submit() runs on a drained chain and never on the data path.
 *
 * The tree changes here keep three things true: every layer's `above`
 * points at the layer whose child it is, chain_renumber() has run on
 * every chain that gained or lost layers (it sets each layer's chain and
 * index), and the infos of every layer above a changed link are computed
 * again -- and when one of those fails, the links are put back as they
 * were and the infos computed once more, so that nothing changed.
 */
#include <errno.h>
#include <string.h>

#include "chain-internal.h"

/* ---- small helpers ------------------------------------------------------- */

struct bks_layer *bks_chain_sink(struct bks_chain *chain)
{
	struct bks_layer *l = chain->top;

	while (l && l->drv->kind != BKS_SINK)
		l = l->child[BKS_CHILD_FILE];
	return l;
}

bool bks_chain_draining(const struct bks_chain *chain)
{
	return chain->drain_depth > 0;
}

/* Nothing in flight and nothing parked: drained, or just opened. */
static bool quiet(const struct bks_chain *c)
{
	return chain_idle(c) && !c->park_head;
}

/* Is image the sink of chain's string or one of the sink's parents? */
static bool is_image(struct bks_chain *chain, const struct bks_layer *image)
{
	for (struct bks_layer *l = bks_chain_sink(chain); l;
	     l = l->child[BKS_CHILD_BACKING]) {
		if (l == image)
			return true;
	}
	return false;
}

/*
 * The drain_begin ops of a tree joining a drained chain, where they have
 * not run (a chain just opened): the chain's drain_end reaches it,
 * balanced.  Each layer gets each op once (chain_layer_drain_begin()).
 */
static void drain_begin_tree(struct bks_layer *root)
{
	for (struct bks_layer *l = root; l; l = layer_walk_next(l, root))
		chain_layer_drain_begin(l);
}

/* ---- submitting to one layer --------------------------------------------- */

static int layer_submit_done(struct bks_req *req, int result, void *arg)
{
	(void)req;
	bks_layer_busy_put(arg);
	return result;
}

int bks_layer_submit(struct bks_layer *l, struct bks_req *req)
{
	if (!l || !req || !req->done)
		return -EINVAL;
	/* A fresh request of no chain's entry: no frames, no age, no pad. */
	req->nframes = 0;
	req->attempts = 0;
	req->chain = l->chain;
	req->age_listed = false;
	req->pad_flags = 0;
	bks_layer_busy_get(l);
	/* nframes is 0: the hook and the accounting frame fit. */
	bks_next_submit_hook(l, req, layer_submit_done, l);
	return 0;
}

/* ---- reopening one image ------------------------------------------------- */

int bks_layer_reopen_mode(struct bks_layer *l, bool read_only,
			  struct bks_error *err)
{
	const char *mode = read_only ? "read-only" : "read-write";
	struct bks_open_args oa;
	int rc;

	if (!l)
		return bks_error_setmsg(err, EINVAL, "reopen: no layer");
	if (!bks_chain_is_drained(l->chain))
		return bks_error_setmsg(err, EBUSY,
					"layer %u (%s): reopen %s: the chain "
					"is not drained",
					l->index + 1, l->drv->name, mode);
	if (l->read_only == read_only)
		return 0;
	if (!l->drv->reopen_prepare)
		return bks_error_setmsg(err, EOPNOTSUPP,
					"layer %u (%s): cannot be reopened %s",
					l->index + 1, l->drv->name, mode);
	memset(&oa, 0, sizeof(oa));
	oa.args = l->args;
	oa.loop = l->chain->loop;
	oa.read_only = read_only;
	oa.meta_cache = l->chain->meta_cache;
	oa.io_engine = l->chain->io_engine;
	rc = l->drv->reopen_prepare(l->state, l, &oa, err);
	if (rc < 0)
		return bks_error_prepend(err, "layer %u (%s): reopen %s: ",
					 l->index + 1, l->drv->name, mode);
	l->drv->reopen_commit(l->state, l);
	l->read_only = read_only;
	return chain_infos_up(l, err);
}

/* ---- snapshot: an overlay above the sink --------------------------------- */

int bks_chain_insert_overlay(struct bks_chain *chain,
			     struct bks_chain **overlay, struct bks_error *err)
{
	struct bks_chain *oc = overlay ? *overlay : NULL;
	struct bks_layer *o, *sink, *above;
	int rc;

	if (!oc || oc == chain || oc->loop != chain->loop)
		return bks_error_setmsg(err, EINVAL,
					"overlay: not a chain of its own on "
					"the chain's loop");
	if (!bks_chain_is_drained(chain) || !quiet(oc))
		return bks_error_setmsg(err, EBUSY,
					"overlay: the chains are not drained");
	o = oc->top;
	if (oc->n != 1 || o->drv->kind != BKS_SINK ||
	    o->child[BKS_CHILD_BACKING])
		return bks_error_setmsg(
		    err, EINVAL,
		    "overlay: not one sink without "
		    "parents (%u layers, the top a %s)",
		    oc->n, o->drv->kind == BKS_SINK ? "sink" : "filter");
	sink = bks_chain_sink(chain);
	if (o->info.size != sink->info.size)
		return bks_error_setmsg(err, EINVAL,
					"overlay: size %llu, the chain's %llu",
					(unsigned long long)o->info.size,
					(unsigned long long)sink->info.size);
	if (o->info.block_size != sink->info.block_size)
		return bks_error_setmsg(
		    err, EINVAL, "overlay: block size %u, the chain's %u",
		    o->info.block_size, sink->info.block_size);
	if (chain->n + 1 > BKS_CHAIN_MAX_LAYERS)
		return bks_error_setmsg(err, ELOOP,
					"overlay: the chain would have more "
					"than %d layers",
					BKS_CHAIN_MAX_LAYERS);
	above = sink->above; /* the lowest filter, or none */
	o->child[BKS_CHILD_BACKING] = sink;
	sink->above = o;
	o->above = above;
	if (above)
		above->child[BKS_CHILD_FILE] = o;
	else
		chain->top = o;
	rc = chain_infos_up(o, err);
	if (rc < 0) {
		o->child[BKS_CHILD_BACKING] = NULL;
		o->above = NULL;
		sink->above = above;
		if (above)
			above->child[BKS_CHILD_FILE] = sink;
		else
			chain->top = sink;
		layer_info(o, NULL);
		if (above)
			chain_infos_up(above, NULL);
		return bks_error_prepend(err, "overlay: ");
	}
	drain_begin_tree(o);
	oc->top = NULL;
	chain_free(oc);
	*overlay = NULL;
	chain_renumber(chain);
	return 0;
}

/* ---- commit and stream: dropping images ---------------------------------- */

int bks_chain_drop_images(struct bks_chain *chain, struct bks_layer *image,
			  struct bks_layer *keep, struct bks_error *err)
{
	struct bks_layer *sink = bks_chain_sink(chain);
	struct bks_layer *above, *last = NULL, *l;
	enum bks_child_role role = BKS_CHILD_FILE;
	int rc = 0;

	if (!bks_chain_is_drained(chain))
		return bks_error_setmsg(err, EBUSY,
					"drop images: the chain is not "
					"drained");
	if (!image || image->chain != chain || !is_image(chain, image))
		return bks_error_setmsg(err, EINVAL,
					"drop images: not an image of the "
					"chain");
	if (!keep && image == sink)
		return bks_error_setmsg(err, EINVAL,
					"drop images: the sink cannot be "
					"dropped with its whole backing line");
	/* keep below image; last: the lowest image dropped. */
	for (l = image; l && l != keep; l = l->child[BKS_CHILD_BACKING])
		last = l;
	if (l != keep || keep == image)
		return bks_error_setmsg(err, EINVAL,
					"drop images: layer %u (%s) is not "
					"below layer %u (%s)",
					keep->index + 1, keep->drv->name,
					image->index + 1, image->drv->name);
	if (image == sink && (keep->info.size != sink->info.size ||
			      keep->info.block_size != sink->info.block_size))
		return bks_error_setmsg(
		    err, EINVAL,
		    "drop images: layer %u (%s) would be the sink with %llu "
		    "bytes in blocks of %u; the chain has %llu in blocks of %u",
		    keep->index + 1, keep->drv->name,
		    (unsigned long long)keep->info.size, keep->info.block_size,
		    (unsigned long long)sink->info.size, sink->info.block_size);
	above = image->above;
	if (above && above->child[BKS_CHILD_BACKING] == image)
		role = BKS_CHILD_BACKING;
	if (above)
		above->child[role] = keep;
	else
		chain->top = keep;
	if (keep) {
		keep->above = above;
		last->child[BKS_CHILD_BACKING] = NULL;
	}
	image->above = NULL;
	if (above)
		rc = chain_infos_up(above, err);
	if (rc < 0) {
		if (keep) {
			last->child[BKS_CHILD_BACKING] = keep;
			keep->above = last;
		}
		image->above = above;
		if (above)
			above->child[role] = image;
		else
			chain->top = image;
		if (above)
			chain_infos_up(above, NULL);
		return bks_error_prepend(err, "drop images: ");
	}
	chain_renumber(chain);
	layer_close_tree(image);
	return 0;
}

/* ---- image swap ---------------------------------------------------------- */

int bks_chain_swap(struct bks_chain *chain, struct bks_chain *other,
		   struct bks_error *err)
{
	const struct bks_info *ci, *oi;
	const struct bks_driver *const *extra;
	struct bks_layer *top;
	unsigned int n;
	uint64_t mc;
	enum bks_io_engine ie;

	if (!other || other == chain || other->loop != chain->loop ||
	    !other->top)
		return bks_error_setmsg(err, EINVAL,
					"new chain: not a chain of its own on "
					"the chain's loop");
	if (!bks_chain_is_drained(chain) || !quiet(other))
		return bks_error_setmsg(err, EBUSY,
					"new chain: the chains are not "
					"drained");
	ci = bks_chain_info(chain);
	oi = bks_chain_info(other);
	if (oi->size != ci->size)
		return bks_error_setmsg(err, EINVAL,
					"new chain: size %llu, the running "
					"chain's %llu",
					(unsigned long long)oi->size,
					(unsigned long long)ci->size);
	if (oi->block_size != ci->block_size)
		return bks_error_setmsg(err, EINVAL,
					"new chain: block size %u, the running "
					"chain's %u",
					oi->block_size, ci->block_size);
	drain_begin_tree(other->top);
	top = chain->top;
	n = chain->n;
	extra = chain->extra;
	mc = chain->meta_cache;
	chain->top = other->top;
	chain->n = other->n;
	chain->extra = other->extra;
	chain->meta_cache = other->meta_cache;
	ie = chain->io_engine;
	chain->io_engine = other->io_engine;
	other->io_engine = ie;
	other->top = top;
	other->n = n;
	other->extra = extra;
	other->meta_cache = mc;
	chain_renumber(chain);
	chain_renumber(other);
	return 0;
}

/* ---- the chain string ---------------------------------------------------- */

int bks_chain_string(struct bks_chain *chain, struct bks_layer *sink, char *buf,
		     size_t size)
{
	struct bks_chain_spec spec;

	if (!buf && size)
		return -EINVAL;
	if (sink && (sink->chain != chain || !is_image(chain, sink)))
		return -EINVAL;
	memset(&spec, 0, sizeof(spec));
	for (struct bks_layer *l = chain->top;
	     l && spec.n < BKS_CHAIN_MAX_LAYERS; l = l->child[BKS_CHILD_FILE]) {
		bool last = l->drv->kind == BKS_SINK;

		if (last && sink)
			l = sink;
		spec.layers[spec.n].desc = &l->drv->desc;
		/* bks_chain_format() only reads it. */
		spec.layers[spec.n].args = l->args;
		spec.n++;
		if (last)
			break;
	}
	return bks_chain_format(&spec, buf, size);
}
