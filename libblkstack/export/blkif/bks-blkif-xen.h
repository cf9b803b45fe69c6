/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The real grant ops of the blkif ring export (grant-xen.c): grant copy
 * and map over libxengnttab, the notify over libxenevtchn, for one
 * frontend domain.  They need /dev/xen/gntdev and /dev/xen/evtchn, i.e.
 * a Xen dom0 (or driver domain); elsewhere bks_blkif_xen_open() fails,
 * saying which device.  Built outside libblkstack.a: whatever links this
 * links -lxengnttab -lxenevtchn (the Makefile's BLKIF_XEN_*).
 *
 * The worker's use (helpers/worker/worker-blkif.c, docs/ring-backend.txt
 * section 7):
 *
 *   bks_blkif_xen_open(&x, domid, event-channel, &err);
 *   bks_blkif_xen_map_ring(x, ring-ref[], ring-page-order, &sring, &err);
 *   cfg.ops = &bks_blkif_xen_ops; cfg.ops_state = x; cfg.sring = sring;
 *   bks_blkif_new(&rg, &cfg, &err); bks_export_start(...);
 *   watch bks_blkif_xen_fd(x): on EPOLLIN, bks_blkif_xen_ack(x) and
 *   bks_blkif_kick(rg);
 *   ... shutdown's done: bks_export_free(), bks_blkif_xen_unmap_ring(),
 *   bks_blkif_xen_close().
 */
#ifndef BLKSTACK_EXPORT_BLKIF_BKS_BLKIF_XEN_H
#define BLKSTACK_EXPORT_BLKIF_BKS_BLKIF_XEN_H

#include <stdint.h>

#include "bks-blkif.h"
#include "blkstack/error.h"

struct bks_blkif_xen;

/* The ops; their state is a struct bks_blkif_xen. */
extern const struct bks_blkif_grant_ops bks_blkif_xen_ops;

/*
 * Open the grant and event channel devices for frontend domid and bind
 * its event channel remote_port.  Returns 0, or -errno with err naming
 * the call that failed.
 */
int bks_blkif_xen_open(struct bks_blkif_xen **out, uint32_t domid,
		       uint32_t remote_port, struct bks_error *err);

/*
 * Map the frontend's 1 << order ring pages (refs, in order) as one
 * contiguous ring, writable.  Returns 0 with *ring, or -errno with err.
 */
int bks_blkif_xen_map_ring(struct bks_blkif_xen *x, const uint32_t *refs,
			   unsigned int order, void **ring,
			   struct bks_error *err);
void bks_blkif_xen_unmap_ring(struct bks_blkif_xen *x, void *ring,
			      unsigned int order);

/* The event channel's fd, for the loop (EPOLLIN: an event). */
int bks_blkif_xen_fd(const struct bks_blkif_xen *x);

/*
 * Take the pending event and unmask the port, before the ring is looked
 * at (so an event during the intake is not lost).  Returns 0 or -errno.
 */
int bks_blkif_xen_ack(struct bks_blkif_xen *x);

/* Unbind and close everything (NULL is fine). */
void bks_blkif_xen_close(struct bks_blkif_xen *x);

#endif /* BLKSTACK_EXPORT_BLKIF_BKS_BLKIF_XEN_H */
