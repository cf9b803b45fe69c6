/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The connect step's input: a frontend's ring nodes (ring-page-order,
 * ring-ref or ring-ref0..N-1, event-channel, protocol,
 * multi-queue-num-queues) and the backend's mode node, read through a
 * lookup function and checked, every value untrusted.  No I/O of its
 * own: xb-dev.c supplies the lookup (xenstore reads), the unit tests a
 * table.  The checked values are what blkstack-worker's blkif-connect
 * takes (docs/control-protocol.txt, docs/ring-backend.txt
 * section 8).
 */
#ifndef BLKSTACK_XB_RING_H
#define BLKSTACK_XB_RING_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <blkstack/error.h>

#define XB_RING_ORDER_MAX 4 /* the worker's limit: 16 ring pages */
#define XB_RING_REFS_MAX  (1u << XB_RING_ORDER_MAX)
#define XB_RING_PORT_MAX  2147483647u

/*
 * Look up node under the frontend's (be false) or the backend's (be true)
 * directory.  Returns 1 with *val set (NUL-terminated, valid until the
 * next call), 0 if absent, or -errno with err set.
 */
typedef int (*xb_ring_lookup_fn)(void *opaque, int be, const char *node,
				 const char **val, struct bks_error *err);

struct xb_ring {
	unsigned int order;		 /* ring-page-order */
	unsigned int nrefs;		 /* 1 << order */
	uint32_t refs[XB_RING_REFS_MAX]; /* the grant references */
	unsigned int port;		 /* event-channel */
	char protocol[16];		 /* x86_64-abi, x86_32-abi or "-" */
	char mode;			 /* 'r' or 'w' */
};

/*
 * Read and check the ring nodes, ring-page-order at most max_order
 * (what we advertised; at most XB_RING_ORDER_MAX).  Returns 0 with *r
 * filled, -EINVAL (a value is not a number, out of range or missing),
 * -EPROTONOSUPPORT (an unknown protocol), -EOPNOTSUPP (more than one
 * queue) or the lookup's -errno, with err naming the node and its value
 * (printable, bounded).
 */
int xb_ring_parse(xb_ring_lookup_fn lookup, void *opaque,
		  unsigned int max_order, struct xb_ring *r,
		  struct bks_error *err);

/*
 * Format r's refs as blkif-connect's REFS argument (comma-separated
 * decimal) into buf.  Returns 0, or -ENOSPC if size is too small.
 */
int xb_ring_refs_format(const struct xb_ring *r, char *buf, size_t size);

/* Longest blkif-watch event line read (docs/control-protocol.txt). */
#define XB_RING_EVENT_MAX 4096

/*
 * blkif-watch's event line from worker name (one JSON object, without its
 * "\n"): {"event":"blkif","blkif":STATE,"error":"NAME: WHY"}, sent when
 * the ring leaves "connected".  Writes WHY (without "NAME: ", printable,
 * at most size - 1 bytes) and *broken (STATE "broken": the guest broke
 * the ring; else it was disconnected).  Pure.  Returns 0, or -EPROTO
 * for a line that is not such an event (err says why).
 */
int xb_ring_event_parse(const char *line, size_t len, const char *name,
			bool *broken, char *why, size_t size,
			struct bks_error *err);

#endif
