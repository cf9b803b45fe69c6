/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The blkif ring export's real grant ops: libxengnttab's grant copy (the
 * gntdev's IOCTL_GNTDEV_GRANT_COPY: one hypercall batch, no mapping of
 * guest memory) and map, libxenevtchn's notify.  Cannot run without Xen
 * (/dev/xen is a dom0's); compiled and linked by every build.  See
 * bks-blkif-xen.h and internal.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include <xenevtchn.h>
#include <xengnttab.h>

#include <xen/xen.h>

#include <xen/grant_table.h>

#include "bks-blkif-xen.h"

/* Grants one frontend may have mapped at once: its ring and a batch. */
#define XEN_MAX_GRANTS                                                         \
	((1u << BKS_BLKIF_MAX_RING_ORDER) + BKS_BLKIF_INDIRECT_LIMIT)

struct bks_blkif_xen {
	uint32_t domid;
	xengnttab_handle *xgt;
	xenevtchn_handle *xce;
	evtchn_port_t port; /* ours, bound to the frontend's */
	bool bound;
	xengnttab_grant_copy_segment_t *segs; /* one batch, at most */
};

static int xen_errno(int fallback)
{
	return errno > 0 ? errno : fallback;
}

static int xen_copy(void *state, struct bks_blkif_copy *c, unsigned int n,
		    bool to_guest)
{
	struct bks_blkif_xen *x = state;

	if (n > BKS_BLKIF_INDIRECT_LIMIT)
		return -E2BIG;
	for (unsigned int i = 0; i < n; i++) {
		xengnttab_grant_copy_segment_t *s = &x->segs[i];

		memset(s, 0, sizeof(*s));
		if (to_guest) {
			s->source.virt = c[i].buf;
			s->dest.foreign.ref = c[i].gref;
			s->dest.foreign.offset = c[i].offset;
			s->dest.foreign.domid = (uint16_t)x->domid;
			s->flags = GNTCOPY_dest_gref;
		} else {
			s->source.foreign.ref = c[i].gref;
			s->source.foreign.offset = c[i].offset;
			s->source.foreign.domid = (uint16_t)x->domid;
			s->dest.virt = c[i].buf;
			s->flags = GNTCOPY_source_gref;
		}
		s->len = c[i].len;
	}
	if (xengnttab_grant_copy(x->xgt, n, x->segs) < 0) {
		int e = xen_errno(EIO);

		/* A gntdev without the copy ioctl: the core maps instead. */
		return e == ENOTTY || e == ENOSYS ? -EOPNOTSUPP : -e;
	}
	for (unsigned int i = 0; i < n; i++)
		c[i].status = x->segs[i].status;
	return 0;
}

static int xen_map(void *state, const uint32_t *grefs, unsigned int n,
		   bool writable, void **addr)
{
	struct bks_blkif_xen *x = state;
	void *p = xengnttab_map_domain_grant_refs(
	    x->xgt, n, x->domid, (uint32_t *)grefs,
	    writable ? PROT_READ | PROT_WRITE : PROT_READ);

	if (!p)
		return -xen_errno(EIO);
	*addr = p;
	return 0;
}

static int xen_unmap(void *state, void *addr, unsigned int n)
{
	struct bks_blkif_xen *x = state;

	return xengnttab_unmap(x->xgt, addr, n) < 0 ? -xen_errno(EIO) : 0;
}

static int xen_notify(void *state)
{
	struct bks_blkif_xen *x = state;

	return xenevtchn_notify(x->xce, x->port) < 0 ? -xen_errno(EIO) : 0;
}

const struct bks_blkif_grant_ops bks_blkif_xen_ops = {
    .name = "xengnttab",
    .copy = xen_copy,
    .map = xen_map,
    .unmap = xen_unmap,
    .notify = xen_notify,
};

int bks_blkif_xen_open(struct bks_blkif_xen **out, uint32_t domid,
		       uint32_t remote_port, struct bks_error *err)
{
	struct bks_blkif_xen *x = NULL;
	xenevtchn_port_or_error_t port;
	int rc = 0;

	*out = NULL;
	x = calloc(1, sizeof(*x));
	if (x)
		x->segs = calloc(BKS_BLKIF_INDIRECT_LIMIT, sizeof(*x->segs));
	if (!x || !x->segs) {
		rc = bks_error_set(err, ENOMEM, "blkif: xen state");
		goto out;
	}
	x->domid = domid;
	x->xgt = xengnttab_open(NULL, 0);
	if (!x->xgt) {
		rc = bks_error_set(err, xen_errno(ENODEV),
				   "blkif: xengnttab_open (/dev/xen/gntdev)");
		goto out;
	}
	if (xengnttab_set_max_grants(x->xgt, XEN_MAX_GRANTS) < 0) {
		rc = bks_error_set(err, xen_errno(EIO),
				   "blkif: xengnttab_set_max_grants %u",
				   XEN_MAX_GRANTS);
		goto out;
	}
	x->xce = xenevtchn_open(NULL, 0);
	if (!x->xce) {
		rc = bks_error_set(err, xen_errno(ENODEV),
				   "blkif: xenevtchn_open (/dev/xen/evtchn)");
		goto out;
	}
	port = xenevtchn_bind_interdomain(x->xce, domid, remote_port);
	if (port < 0) {
		rc = bks_error_set(err, xen_errno(EIO),
				   "blkif: bind event channel %u of domain %u",
				   remote_port, domid);
		goto out;
	}
	x->port = (evtchn_port_t)port;
	x->bound = true;
	*out = x;
	x = NULL;
out:
	bks_blkif_xen_close(x);
	return rc;
}

int bks_blkif_xen_map_ring(struct bks_blkif_xen *x, const uint32_t *refs,
			   unsigned int order, void **ring,
			   struct bks_error *err)
{
	unsigned int n = 1u << order;
	void *p;

	if (order > BKS_BLKIF_MAX_RING_ORDER)
		return bks_error_setmsg(err, EINVAL,
					"blkif: ring-page-order %u above %u",
					order, BKS_BLKIF_MAX_RING_ORDER);
	p = xengnttab_map_domain_grant_refs(
	    x->xgt, n, x->domid, (uint32_t *)refs, PROT_READ | PROT_WRITE);
	if (!p)
		return bks_error_set(err, xen_errno(EIO),
				     "blkif: map %u ring pages of domain %u", n,
				     x->domid);
	*ring = p;
	return 0;
}

void bks_blkif_xen_unmap_ring(struct bks_blkif_xen *x, void *ring,
			      unsigned int order)
{
	if (ring)
		xengnttab_unmap(x->xgt, ring, 1u << order);
}

int bks_blkif_xen_fd(const struct bks_blkif_xen *x)
{
	return xenevtchn_fd(x->xce);
}

int bks_blkif_xen_ack(struct bks_blkif_xen *x)
{
	xenevtchn_port_or_error_t port = xenevtchn_pending(x->xce);

	if (port < 0)
		return errno == EAGAIN ? 0 : -xen_errno(EIO);
	return xenevtchn_unmask(x->xce, (evtchn_port_t)port) < 0
		   ? -xen_errno(EIO)
		   : 0;
}

void bks_blkif_xen_close(struct bks_blkif_xen *x)
{
	if (!x)
		return;
	if (x->bound)
		xenevtchn_unbind(x->xce, x->port);
	if (x->xce)
		xenevtchn_close(x->xce);
	if (x->xgt)
		xengnttab_close(x->xgt);
	free(x->segs);
	free(x);
}
