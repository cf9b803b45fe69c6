/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Changing a running chain while it is drained: reopening its layers
 * with new args (prepare on all, then commit on all or abort on all), and
 * replacing a layer's child (a snapshot's new top, an image swap).  See
 * bks_chain_reopen() and bks_chain_replace_child() in chain.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "chain-internal.h"

/* The infos of l and every layer above it, again, bottom first. */
int chain_infos_up(struct bks_layer *l, struct bks_error *err)
{
	for (; l; l = l->above) {
		int rc = layer_info(l, err);

		if (rc < 0)
			return rc;
	}
	return 0;
}

/* The infos of every layer under l, again, bottom first. */
static int infos_tree(struct bks_layer *l, struct bks_error *err)
{
	int rc;

	if (!l)
		return 0;
	for (unsigned int r = 0; r < BKS_CHILD_COUNT; r++) {
		rc = infos_tree(l->child[r], err);
		if (rc < 0)
			return rc;
	}
	return layer_info(l, err);
}

int bks_chain_reopen(struct bks_chain *chain, const char *s, bool read_only,
		     struct bks_error *err)
{
	struct bks_chain_spec spec = {0};
	struct bks_layer *layers[BKS_CHAIN_MAX_LAYERS];
	char *args[BKS_CHAIN_MAX_LAYERS] = {0};
	bool prepared[BKS_CHAIN_MAX_LAYERS] = {0};
	unsigned int n = 0;
	int rc;

	if (!bks_chain_is_drained(chain))
		return bks_error_setmsg(err, EBUSY,
					"chain: reopen: the chain is not "
					"drained");
	rc = bks_chain_parse_with(s, s ? strnlen(s, BKS_CHAIN_STR_MAX + 1) : 0,
				  chain->extra, &spec, err);
	if (rc < 0)
		goto out;
	/* The chain's own layers: the filters and the sink, not parents. */
	for (struct bks_layer *l = chain->top; l && n < BKS_CHAIN_MAX_LAYERS;
	     l = l->child[BKS_CHILD_FILE]) {
		layers[n++] = l;
		if (l->drv->kind == BKS_SINK)
			break;
	}
	if (n != spec.n) {
		rc = bks_error_setmsg(err, EINVAL,
				      "chain: reopen: %u layers, the chain has "
				      "%u",
				      spec.n, n);
		goto out;
	}
	for (unsigned int i = 0; i < n; i++) {
		const struct bks_driver *drv = NULL;

		rc = chain_driver_of(chain, i, spec.layers[i].desc, &drv, err);
		if (rc < 0)
			goto out;
		if (drv != layers[i]->drv) {
			rc = bks_error_setmsg(err, EINVAL,
					      "chain: reopen: layer %u is "
					      "'%s', not '%s'",
					      i + 1, layers[i]->drv->name,
					      spec.layers[i].desc->name);
			goto out;
		}
	}
	for (unsigned int i = 0; i < n; i++) {
		struct bks_layer *l = layers[i];
		struct bks_open_args oa = {
		    .args = spec.layers[i].args,
		    .loop = chain->loop,
		    .read_only = read_only,
		    .meta_cache = chain->meta_cache,
		    .io_engine = chain->io_engine,
		};

		if (strcmp(l->args, oa.args) == 0 && l->read_only == read_only)
			continue;
		if (!l->drv->reopen_prepare) {
			rc = bks_error_setmsg(err, EOPNOTSUPP,
					      "layer %u (%s): cannot be "
					      "reopened with other args",
					      i + 1, l->drv->name);
			goto out;
		}
		/* Allocated before any commit, which may not fail. */
		args[i] = strdup(oa.args);
		if (!args[i]) {
			rc = bks_error_set(err, ENOMEM, "layer %u (%s)", i + 1,
					   l->drv->name);
			goto out;
		}
		rc = l->drv->reopen_prepare(l->state, l, &oa, err);
		if (rc < 0) {
			bks_error_prepend(err, "layer %u (%s): reopen: ", i + 1,
					  l->drv->name);
			goto out;
		}
		prepared[i] = true;
	}
	for (unsigned int i = 0; i < n; i++) {
		if (!prepared[i])
			continue;
		layers[i]->drv->reopen_commit(layers[i]->state, layers[i]);
		prepared[i] = false;
		free(layers[i]->args);
		layers[i]->args = args[i];
		args[i] = NULL;
		layers[i]->read_only = read_only;
	}
	rc = infos_tree(chain->top, err);
out:
	for (unsigned int i = 0; i < n; i++) {
		if (prepared[i])
			layers[i]->drv->reopen_abort(layers[i]->state,
						     layers[i]);
		free(args[i]);
	}
	bks_chain_spec_free(&spec);
	return rc;
}

unsigned int chain_count_tree(const struct bks_layer *l)
{
	unsigned int n = 0;

	if (!l)
		return 0;
	for (unsigned int r = 0; r < BKS_CHILD_COUNT; r++)
		n += chain_count_tree(l->child[r]);
	return n + 1;
}

static bool quiet(const struct bks_chain *c)
{
	return chain_idle(c) && !c->park_head;
}

int bks_chain_replace_child(struct bks_layer *layer, enum bks_child_role role,
			    struct bks_chain **new_child,
			    struct bks_chain **old, struct bks_error *err)
{
	struct bks_chain *chain = layer->chain, *nc = *new_child;
	struct bks_chain *shell = NULL;
	struct bks_layer *prev;
	bool wanted;
	int rc;

	if (old)
		*old = NULL;
	if (!bks_chain_is_drained(chain) || !quiet(nc))
		return bks_error_setmsg(err, EBUSY,
					"layer %u (%s): replace child: the "
					"chains are not drained",
					layer->index + 1, layer->drv->name);
	wanted = (role == BKS_CHILD_FILE && layer->drv->kind == BKS_FILTER) ||
		 (role == BKS_CHILD_BACKING && layer->drv->kind == BKS_SINK);
	if (!wanted || nc->loop != chain->loop || nc == chain)
		return bks_error_setmsg(
		    err, EINVAL,
		    "layer %u (%s): replace child: a %s "
		    "has no %s child here",
		    layer->index + 1, layer->drv->name,
		    layer->drv->kind == BKS_SINK ? "sink" : "filter",
		    role == BKS_CHILD_FILE ? "file" : "backing");
	prev = layer->child[role];
	if (chain->n - chain_count_tree(prev) + nc->n > BKS_CHAIN_MAX_LAYERS)
		return bks_error_setmsg(err, ELOOP,
					"layer %u (%s): replace child: more "
					"than %d layers",
					layer->index + 1, layer->drv->name,
					BKS_CHAIN_MAX_LAYERS);
	if (prev && old) {
		shell = chain_alloc(chain->loop, chain->extra);
		if (!shell)
			return bks_error_set(err, ENOMEM, "replace child");
	}
	layer->child[role] = nc->top;
	nc->top->above = layer;
	rc = chain_infos_up(layer, err);
	if (rc < 0) {
		/* Back as it was: the same infos come out again. */
		layer->child[role] = prev;
		nc->top->above = NULL;
		chain_infos_up(layer, NULL);
		chain_free(shell);
		return rc;
	}
	nc->top = NULL;
	chain_free(nc);
	*new_child = NULL;
	chain_renumber(chain);
	if (!prev)
		return 0;
	prev->above = NULL;
	if (!old) {
		layer_close_tree(prev);
		return 0;
	}
	shell->top = prev;
	chain_renumber(shell);
	*old = shell;
	return 0;
}
