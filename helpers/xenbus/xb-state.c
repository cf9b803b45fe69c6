/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The backend's side of the xenbus state model (xb-state.h). */
#include <stdio.h>

#include "xb-state.h"

/* Leave for state s: Closing or Closed, taking the ring back first. */
static struct xb_step leave(const struct xb_view *v, enum xb_state s)
{
	struct xb_step st = {.next = s, .disconnect = v->served};

	return st;
}

struct xb_step xb_decide(const struct xb_view *v)
{
	struct xb_step st = {.next = v->backend};
	enum xb_state fe = v->frontend;

	/* The toolstack takes the device down (online 0, and libxl writes
	 * Closing too): Closed, whatever the frontend does. */
	if (!v->online) {
		if (v->backend != XB_CLOSED)
			st = leave(v, XB_CLOSED);
		return st;
	}
	switch (v->backend) {
	case XB_INITIALISING:
		st.next = XB_INITWAIT;
		break;
	case XB_INITWAIT:
		if (fe == XB_INITIALISED || fe == XB_CONNECTED) {
			st.next = XB_CONNECTED;
			st.connect = true;
		} else if (fe == XB_CLOSING) {
			st = leave(v, XB_CLOSING);
		} else if (fe == XB_CLOSED || fe == XB_UNKNOWN) {
			st = leave(v, XB_CLOSED);
		}
		break;
	case XB_CONNECTED:
		if (fe == XB_CLOSING)
			st = leave(v, XB_CLOSING);
		else if (fe == XB_CLOSED || fe == XB_UNKNOWN ||
			 fe == XB_INITIALISING)
			/* Gone, or started again without closing: Closed,
			 * and from there InitWait once it is Initialising. */
			st = leave(v, XB_CLOSED);
		break;
	case XB_CLOSING:
		if (fe == XB_CLOSED || fe == XB_UNKNOWN ||
		    fe == XB_INITIALISING)
			st = leave(v, XB_CLOSED);
		break;
	case XB_CLOSED:
		/* Only the frontend's Initialising reopens (xen-bus). */
		if (fe == XB_INITIALISING)
			st.next = XB_INITWAIT;
		break;
	default:
		/* Not a state a backend is left in (Unknown, Initialised,
		 * Reconfiguring...): someone else wrote it.  Closed. */
		st = leave(v, XB_CLOSED);
		break;
	}
	return st;
}

const char *xb_state_name(enum xb_state s)
{
	static const char *const names[] = {
	    [XB_UNKNOWN] = "Unknown",
	    [XB_INITIALISING] = "Initialising",
	    [XB_INITWAIT] = "InitWait",
	    [XB_INITIALISED] = "Initialised",
	    [XB_CONNECTED] = "Connected",
	    [XB_CLOSING] = "Closing",
	    [XB_CLOSED] = "Closed",
	    [XB_RECONFIGURING] = "Reconfiguring",
	    [XB_RECONFIGURED] = "Reconfigured",
	};

	if ((unsigned int)s < sizeof(names) / sizeof(names[0]))
		return names[s];
	return "state ?";
}
