/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The backend's side of the xenbus state model for one vbd3 device: what
 * the backend's state becomes, given what xenstore says now.  No I/O: the
 * caller (xb-dev.c) reads the nodes, calls xb_decide() and carries out the
 * answer.  docs/ring-backend.txt, "The xenstore side", has the table.
 *
 * The model is QEMU's xen-bus one (../shared/seeds, commit 67bc8e00f7): a
 * Closed backend of an online device goes back to InitWait only when its
 * frontend goes to Initialising, never by itself.
 */
#ifndef BLKSTACK_XB_STATE_H
#define BLKSTACK_XB_STATE_H

#include <stdbool.h>

/* xen/include/public/io/xenbus.h's XenbusState values. */
enum xb_state {
	XB_UNKNOWN = 0,
	XB_INITIALISING = 1,
	XB_INITWAIT = 2,
	XB_INITIALISED = 3,
	XB_CONNECTED = 4,
	XB_CLOSING = 5,
	XB_CLOSED = 6,
	XB_RECONFIGURING = 7,
	XB_RECONFIGURED = 8,
};

/* What xenstore says of one device. */
struct xb_view {
	enum xb_state backend;	/* the backend's state node */
	enum xb_state frontend; /* XB_UNKNOWN: no frontend state node */
	bool online;		/* the backend's online node is "1" */
	bool served;		/* a ring server holds this device's ring */
};

/* What to do about it. */
struct xb_step {
	enum xb_state next; /* the backend state to write; == backend: none */
	bool connect;	    /* hand the ring to its server, then Connected */
	bool disconnect;    /* take the ring from its server first */
};

/*
 * The step for view v.  Never fails: a view that calls for nothing gives
 * next == v->backend with neither flag set.  Called by xb-dev.c each time
 * a node of the device changes.
 */
struct xb_step xb_decide(const struct xb_view *v);

/* "InitWait" and so on, for messages; "state ?" for others. */
const char *xb_state_name(enum xb_state s);

#endif /* BLKSTACK_XB_STATE_H */
