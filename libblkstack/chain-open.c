/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Opening and closing chains (one open path, parents included), the
 * layers' infos, walking the layers, and the accessors of a layer.  See
 * include/blkstack/chain.h and driver.h.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "blkstack/driver-module.h"
#include "chain-internal.h"

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

const char *bks_layer_args(const struct bks_layer *layer)
{
	return layer->args;
}

struct bks_layer *bks_layer_child(struct bks_layer *self,
				  enum bks_child_role role)
{
	return (unsigned int)role < BKS_CHILD_COUNT ? self->child[role] : NULL;
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

/* ---- walking ------------------------------------------------------------- */

/*
 * The layer after l in the walk of the tree under root: depth first, a
 * layer before its children, file before backing.
 */
struct bks_layer *layer_walk_next(struct bks_layer *l, struct bks_layer *root)
{
	for (unsigned int r = 0; r < BKS_CHILD_COUNT; r++) {
		if (l->child[r])
			return l->child[r];
	}
	while (l != root && l->above) {
		struct bks_layer *p = l->above;
		bool after = false;

		for (unsigned int r = 0; r < BKS_CHILD_COUNT; r++) {
			if (after && p->child[r])
				return p->child[r];
			if (p->child[r] == l)
				after = true;
		}
		l = p;
	}
	return NULL;
}

/* Set every layer's chain and index from the walk, and count them. */
void chain_renumber(struct bks_chain *chain)
{
	unsigned int i = 0;

	for (struct bks_layer *l = chain->top; l;
	     l = layer_walk_next(l, chain->top)) {
		l->chain = chain;
		l->index = i++;
	}
	chain->n = i;
}

unsigned int bks_chain_layers(const struct bks_chain *chain)
{
	return chain->n;
}

struct bks_layer *bks_chain_top(struct bks_chain *chain)
{
	return chain->top;
}

struct bks_layer *bks_chain_next_layer(struct bks_layer *layer)
{
	return layer_walk_next(layer, layer->chain->top);
}

struct bks_layer *bks_chain_layer(struct bks_chain *chain, unsigned int i)
{
	struct bks_layer *l = chain->top;

	while (l && i--)
		l = layer_walk_next(l, chain->top);
	return l;
}

struct bks_layer *bks_chain_find(struct bks_chain *chain, const char *name)
{
	for (struct bks_layer *l = chain->top; l;
	     l = layer_walk_next(l, chain->top)) {
		if (strcmp(l->drv->name, name) == 0)
			return l;
	}
	return NULL;
}

const struct bks_info *bks_chain_info(const struct bks_chain *chain)
{
	return &chain->top->info;
}

/* ---- infos --------------------------------------------------------------- */

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

/*
 * Compute l's info: a filter starts from its file child's, a sink from
 * zero; the driver's info op narrows or fills it.  Allocates the split
 * pool the first time the layer has limits (never on the data path).
 */
int layer_info(struct bks_layer *l, struct bks_error *err)
{
	struct bks_layer *file = l->child[BKS_CHILD_FILE];
	struct bks_info info = {0};
	int rc;

	if (l->drv->kind == BKS_FILTER && file)
		info = file->info;
	if (l->drv->info) {
		rc = l->drv->info(l->state, l, &info);
		if (rc < 0)
			return bks_error_set(err, -rc, "layer %u (%s): info",
					     l->index + 1, l->drv->name);
	} else if (l->drv->kind == BKS_SINK) {
		return bks_error_setmsg(err, EINVAL,
					"layer %u (%s): a sink without info",
					l->index + 1, l->drv->name);
	}
	if (l->read_only)
		info.read_only = true;
	rc = check_info(&info, l->index, l->drv->name, err);
	if (rc < 0)
		return rc;
	if ((info.max_discard || info.max_write_zeroes) && !l->split.reqs &&
	    subpool_init(&l->split, BKS_SPLIT_POOL, 0) < 0)
		return bks_error_set(err, ENOMEM, "layer %u (%s): split pool",
				     l->index + 1, l->drv->name);
	l->info = info;
	return 0;
}

/* ---- opening and closing ------------------------------------------------- */

int chain_driver_of(const struct bks_chain *chain, unsigned int idx,
		    const struct bks_driver_desc *desc,
		    const struct bks_driver **out, struct bks_error *err)
{
	for (size_t i = 0; chain->extra && chain->extra[i]; i++) {
		if (&chain->extra[i]->desc == desc) {
			*out = chain->extra[i];
			return 0;
		}
	}
	if (desc->module) {
		int rc = bks_driver_module_load(desc, out, err);

		if (rc < 0)
			return bks_error_prepend(
			    err, "layer %u (%s): ", idx + 1, desc->name);
		return 0;
	}
	*out = bks_driver_of(desc);
	if (!*out) /* a desc without a driver: a registry bug */
		return bks_error_setmsg(err, ENOENT,
					"layer %u (%s): no such driver",
					idx + 1, desc->name);
	return 0;
}

struct bks_chain *chain_alloc(struct bks_loop *loop,
			      const struct bks_driver *const *extra)
{
	struct bks_chain *chain = calloc(1, sizeof(*chain));

	if (!chain)
		return NULL;
	chain->loop = loop;
	chain->extra = extra;
	bks_chain_set_retry(chain, NULL);
	chain_drain_init(chain);
	return chain;
}

void chain_free(struct bks_chain *chain)
{
	if (!chain)
		return;
	bks_defer_cancel(&chain->drained_defer);
	bks_pad_fini(&chain->pad);
	free(chain);
}

/* Close l and everything below it, l first. */
void layer_close_tree(struct bks_layer *l)
{
	if (!l)
		return;
	if (l->opened && l->drv->close)
		l->drv->close(l->state, l);
	for (unsigned int r = 0; r < BKS_CHILD_COUNT; r++)
		layer_close_tree(l->child[r]);
	subpool_free(&l->subs);
	subpool_free(&l->split);
	free(l->state);
	free(l->args);
	free(l);
}

/*
 * Open a layer of chain (position idx, for messages) with drv and args.
 * It is linked before it is opened, so that closing the chain frees it
 * whatever fails: above file (a filter: it becomes the top), or as the
 * backing child of parent_of (a parent image), or as the top (the sink).
 */
static int layer_open(struct bks_chain *chain, unsigned int idx,
		      const struct bks_driver_desc *desc, const char *args,
		      struct bks_layer *file, struct bks_layer *parent_of,
		      bool read_only, struct bks_error *err)
{
	const struct bks_driver *drv = NULL;
	struct bks_layer *l;
	struct bks_open_args oa = {
	    .args = args ? args : "",
	    .loop = chain->loop,
	    .read_only = read_only,
	    .meta_cache = chain->meta_cache,
	    .io_engine = chain->io_engine,
	};
	char state_path[BKS_STATE_DIR_MAX + 32];
	int rc;

	/* Parents have none: they are read-only images. */
	if (chain->state_dir && !parent_of) {
		snprintf(state_path, sizeof(state_path),
			 "%s/" BKS_LAYER_STATE_FMT, chain->state_dir, idx);
		oa.state_path = state_path;
	}

	rc = chain_driver_of(chain, idx, desc, &drv, err);
	if (rc < 0)
		return rc;
	l = calloc(1, sizeof(*l));
	if (!l)
		return bks_error_set(err, ENOMEM, "layer %u (%s)", idx + 1,
				     drv->name);
	l->drv = drv;
	l->index = idx;
	l->chain = chain;
	l->read_only = read_only;
	if (parent_of) {
		parent_of->child[BKS_CHILD_BACKING] = l;
		l->above = parent_of;
	} else {
		if (file) {
			l->child[BKS_CHILD_FILE] = file;
			file->above = l;
		}
		chain->top = l;
	}
	l->args = strdup(oa.args);
	if (!l->args)
		return bks_error_set(err, ENOMEM, "layer %u (%s)", idx + 1,
				     drv->name);
	if (drv->state_size) {
		l->state = calloc(1, drv->state_size);
		if (!l->state)
			return bks_error_set(err, ENOMEM, "layer %u (%s)",
					     idx + 1, drv->name);
	}
	if (drv->subreq_max &&
	    subpool_init(&l->subs, drv->subreq_max, drv->subreq_data_size) < 0)
		return bks_error_set(err, ENOMEM,
				     "layer %u (%s): %u sub-requests", idx + 1,
				     drv->name, drv->subreq_max);
	rc = drv->open(l->state, l, &oa, err);
	if (rc < 0)
		return bks_error_prepend(err, "layer %u (%s): ", idx + 1,
					 drv->name);
	l->opened = true;
	return layer_info(l, err);
}

/* A layer's image file, by identity, for finding loops among parents. */
struct image_id {
	dev_t dev;
	ino_t ino;
	const char *path; /* the layer's args */
};

/*
 * The identity of the image a layer's args name (drivers whose args are a
 * path); false for other drivers, or a path that cannot be stat()ed (its
 * open fails later, with its own message).
 */
static bool image_id_of(const struct bks_driver_desc *desc, const char *args,
			struct image_id *id)
{
	struct stat st;

	if (!desc->args_path || !args || stat(args, &st) < 0)
		return false;
	id->dev = st.st_dev;
	id->ino = st.st_ino;
	id->path = args;
	return true;
}

/*
 * Link the parents of the sink bottom below it, as further read-only
 * layers (each the backing child of the one above), until a layer has no
 * parent.
 */
static int open_parents(struct bks_chain *chain, struct bks_layer *bottom,
			struct bks_error *err)
{
	struct bks_chain_spec pspec = {0};
	struct image_id ids[BKS_CHAIN_MAX_LAYERS + 1];
	unsigned int nids = 0;
	char *buf = NULL;
	int rc = 0;

	if (image_id_of(&bottom->drv->desc, bottom->args, &ids[0]))
		nids = 1;
	buf = malloc(BKS_PARENT_MAX);
	if (!buf)
		return bks_error_set(err, ENOMEM, "chain: parent");
	for (;;) {
		struct bks_layer *l = bottom;
		bool added;

		if (!l->drv->get_parent)
			break;
		rc = l->drv->get_parent(l->state, l, buf, BKS_PARENT_MAX, err);
		if (rc == BKS_NO_PARENT) {
			rc = 0;
			break;
		}
		if (rc < 0) {
			bks_error_prepend(err, "layer %u (%s): parent: ",
					  l->index + 1, l->drv->name);
			goto out;
		}
		buf[BKS_PARENT_MAX - 1] = '\0';
		rc = bks_chain_parse_with(buf, strlen(buf), chain->extra,
					  &pspec, err);
		if (rc == 0 && pspec.n != 1)
			rc = bks_error_setmsg(err, EINVAL,
					      "parent is not a single layer");
		if (rc < 0) {
			bks_error_prepend(err, "layer %u (%s): parent: ",
					  l->index + 1, l->drv->name);
			goto out;
		}
		/* The same file twice: a loop, whatever its names. */
		added = false;
		if (nids <= BKS_CHAIN_MAX_LAYERS &&
		    image_id_of(pspec.layers[0].desc, pspec.layers[0].args,
				&ids[nids])) {
			for (unsigned int i = 0; i < nids; i++) {
				if (ids[i].dev != ids[nids].dev ||
				    ids[i].ino != ids[nids].ino)
					continue;
				rc = bks_error_setmsg(
				    err, ELOOP,
				    "layer %u (%s): backing chain loop: its "
				    "parent %s is the same file as %s, "
				    "already in the chain",
				    l->index + 1, l->drv->name, ids[nids].path,
				    ids[i].path);
				goto out;
			}
			nids++;
			added = true;
		}
		if (chain->n == BKS_CHAIN_MAX_LAYERS) {
			rc = bks_error_setmsg(
			    err, ELOOP,
			    "layer %u (%s): parent %s: the "
			    "chain would have more than %d "
			    "layers (BKS_CHAIN_MAX_LAYERS), "
			    "parents included",
			    l->index + 1, l->drv->name,
			    pspec.layers[0].args ? pspec.layers[0].args : "",
			    BKS_CHAIN_MAX_LAYERS);
			goto out;
		}
		rc = layer_open(chain, chain->n, pspec.layers[0].desc,
				pspec.layers[0].args, NULL, l, true, err);
		chain->n++;
		if (rc < 0)
			goto out;
		bottom = l->child[BKS_CHILD_BACKING];
		/* Named by the layer's own copy: pspec is freed now. */
		if (added)
			ids[nids - 1].path = bottom->args;
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
	layer_close_tree(chain->top);
	chain_free(chain);
}

int bks_chain_open_config(struct bks_chain **out, const char *s,
			  const struct bks_chain_config *cfg,
			  struct bks_error *err)
{
	struct bks_chain_spec spec = {0};
	struct bks_chain *chain = NULL;
	const struct bks_driver *const *extra = cfg->extra;
	struct bks_loop *loop = cfg->loop;
	bool read_only = cfg->read_only;
	struct bks_layer *sink;
	unsigned int last;
	int rc;

	*out = NULL;
	if (cfg->state_dir && (!cfg->state_dir[0] ||
			       strnlen(cfg->state_dir, BKS_STATE_DIR_MAX + 1) >
				   BKS_STATE_DIR_MAX))
		return bks_error_setmsg(err, EINVAL,
					"chain: the state directory must be "
					"a path of 1 to %d bytes",
					BKS_STATE_DIR_MAX);
	rc = bks_chain_parse_with(s, s ? strnlen(s, BKS_CHAIN_STR_MAX + 1) : 0,
				  extra, &spec, err);
	if (rc < 0)
		goto out;
	if (cfg->no_backing && spec.n != 1) {
		rc = bks_error_setmsg(err, EINVAL,
				      "chain: no_backing is for a one-layer "
				      "chain (a sink), not %u layers",
				      spec.n);
		goto out;
	}
	chain = chain_alloc(loop, extra);
	if (!chain) {
		rc = bks_error_set(err, ENOMEM, "chain");
		goto out;
	}
	chain->state_dir = cfg->state_dir;
	chain->meta_cache = cfg->meta_cache;
	chain->io_engine = cfg->io_engine;
	/* The sink, then its parents below it, then the filters above. */
	last = spec.n - 1;
	chain->n = spec.n;
	rc = layer_open(chain, last, spec.layers[last].desc,
			spec.layers[last].args, NULL, NULL, read_only, err);
	if (rc < 0)
		goto out;
	sink = chain->top;
	if (!cfg->no_backing) {
		rc = open_parents(chain, sink, err);
		if (rc < 0)
			goto out;
	}
	for (unsigned int i = last; i-- > 0;) {
		rc = layer_open(chain, i, spec.layers[i].desc,
				spec.layers[i].args, chain->top, NULL,
				read_only, err);
		if (rc < 0)
			goto out;
	}
	chain_renumber(chain);
	chain->state_dir = NULL; /* the caller's string: not kept */
	if (bks_pad_init(&chain->pad, &chain_pad_ops, chain, loop,
			 bks_chain_info(chain)->block_size) < 0) {
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

int bks_chain_open_with(struct bks_chain **out, const char *s,
			const struct bks_driver *const *extra,
			struct bks_loop *loop, bool read_only,
			struct bks_error *err)
{
	const struct bks_chain_config cfg = {
	    .loop = loop, .read_only = read_only, .extra = extra};

	return bks_chain_open_config(out, s, &cfg, err);
}

int bks_chain_open(struct bks_chain **out, const char *s, struct bks_loop *loop,
		   bool read_only, struct bks_error *err)
{
	return bks_chain_open_with(out, s, NULL, loop, read_only, err);
}
