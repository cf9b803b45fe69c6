/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Live surgery on a chain (chain.h): stubs, being written. */
#include <errno.h>

#include "chain-internal.h"

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

int bks_layer_submit(struct bks_layer *l, struct bks_req *req)
{
	(void)l;
	req->done(req, -ENOSYS);
	return 0;
}

int bks_layer_reopen_mode(struct bks_layer *l, bool read_only,
			  struct bks_error *err)
{
	(void)l;
	(void)read_only;
	return bks_error_setmsg(err, ENOSYS, "not yet");
}

int bks_chain_insert_overlay(struct bks_chain *chain,
			     struct bks_chain **overlay, struct bks_error *err)
{
	(void)chain;
	(void)overlay;
	return bks_error_setmsg(err, ENOSYS, "not yet");
}

int bks_chain_drop_images(struct bks_chain *chain, struct bks_layer *image,
			  struct bks_layer *keep, struct bks_error *err)
{
	(void)chain;
	(void)image;
	(void)keep;
	return bks_error_setmsg(err, ENOSYS, "not yet");
}

int bks_chain_swap(struct bks_chain *chain, struct bks_chain *other,
		   struct bks_error *err)
{
	(void)chain;
	(void)other;
	return bks_error_setmsg(err, ENOSYS, "not yet");
}

int bks_chain_string(struct bks_chain *chain, struct bks_layer *sink, char *buf,
		     size_t size)
{
	(void)chain;
	(void)sink;
	(void)buf;
	(void)size;
	return -ENOSYS;
}
