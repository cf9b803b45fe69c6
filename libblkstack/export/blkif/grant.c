/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export: moving bytes between the guest's granted pages
 * and our buffers with the grant ops.  Grant copy is the way (one batch
 * per request, the hypervisor checks each grant and we never map guest
 * memory); map and unmap are the fallback for a host whose gntdev cannot
 * copy.  See internal.h.
 */
#include <errno.h>
#include <string.h>

#include "internal.h"

static int move_copy(struct bks_blkif *rg, unsigned int n, bool to_guest,
		     struct bks_error *err)
{
	int rc = rg->ops->copy(rg->ops_state, rg->copies, n, to_guest);

	if (rc < 0)
		return bks_error_set(err, -rc, "blkif: %s: grant copy of %u",
				     rg->ops->name, n);
	for (unsigned int i = 0; i < n; i++)
		if (rg->copies[i].status != BKS_GNTST_OKAY)
			return bks_error_setmsg(
			    err, EIO,
			    "blkif: segment %u (gref %u): grant copy status %d",
			    i, rg->copies[i].gref, rg->copies[i].status);
	return 0;
}

static int move_map(struct bks_blkif *rg, unsigned int n, bool to_guest,
		    struct bks_error *err)
{
	unsigned char *pages = NULL;
	void *addr = NULL;
	int rc;

	for (unsigned int i = 0; i < n; i++)
		rg->grefs[i] = rg->copies[i].gref;
	rc = rg->ops->map(rg->ops_state, rg->grefs, n, to_guest, &addr);
	if (rc < 0)
		return bks_error_set(err, -rc, "blkif: %s: map of %u grants",
				     rg->ops->name, n);
	pages = addr;
	for (unsigned int i = 0; i < n; i++) {
		struct bks_blkif_copy *c = &rg->copies[i];
		unsigned char *p =
		    pages + (size_t)i * BKS_BLKIF_PAGE_SIZE + c->offset;

		if (to_guest)
			memcpy(p, c->buf, c->len);
		else
			memcpy(c->buf, p, c->len);
		c->status = BKS_GNTST_OKAY;
	}
	rc = rg->ops->unmap(rg->ops_state, addr, n);
	if (rc < 0)
		return bks_error_set(err, -rc, "blkif: %s: unmap of %u grants",
				     rg->ops->name, n);
	return 0;
}

int grant_move(struct bks_blkif *rg, unsigned int n, bool to_guest,
	       struct bks_error *err)
{
	int rc;

	if (rg->ops->copy && !rg->no_copy) {
		rc = move_copy(rg, n, to_guest, err);
		if ((rc != -ENOSYS && rc != -EOPNOTSUPP) || !rg->ops->map)
			return rc;
		/* This host cannot copy grants: map from now on. */
		rg->no_copy = true;
		bks_error_clear(err);
	}
	return move_map(rg, n, to_guest, err);
}
