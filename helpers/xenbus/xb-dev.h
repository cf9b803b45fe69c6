/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One vbd3 device, as blkstack-xenbus sees it in xenstore: its paths
 * (checked once, when it is found), the watch on its frontend's state,
 * and the step of the state model (xb-state.h) that each change calls for,
 * read and written in one xenstore transaction.
 *
 * Everything read from xenstore is untrusted: the frontend-id must be a
 * guest's domain id that matches the backend path, and the frontend path
 * must be exactly the one libxl writes for it; a device that fails a check
 * is never touched (blkstack-xenbus says why, once).
 */
#ifndef BLKSTACK_XB_DEV_H
#define BLKSTACK_XB_DEV_H

#include <stdbool.h>
#include <xenstore.h>

#include "blkstack/error.h"
#include "blkstack/loop.h"
#include "xb-ring.h"
#include "xb-state.h"

/* Longest path blkstack-xenbus builds (XENSTORE_ABS_PATH_MAX). */
#define XB_PATH_MAX 3072

/* What the daemon advertises at InitWait. */
struct xb_conf {
	unsigned int max_ring_page_order; /* max-ring-page-order */
	const char *rundir; /* the workers' run directory (ctl.sock) */
	/* blkstack-xenbus's loop: each Connected device's blkif-watch
	 * connection is watched there (NULL: none is kept) */
	struct bks_loop *loop;
};

struct xb_dev {
	unsigned int domid; /* the guest's (the frontend's) */
	unsigned int devid;
	char be[XB_PATH_MAX];	    /* the backend directory */
	char fe[XB_PATH_MAX];	    /* the frontend directory */
	char fe_state[XB_PATH_MAX]; /* fe/state: watched, token be */
	bool fe_watched;
	bool served;	    /* the worker below holds the ring */
	char worker[72];    /* the worker blkif-connect went to */
	bool said_unserved; /* "no ring server" was said */
	/*
	 * blkif-watch: a second connection to the worker, kept on conf's
	 * loop while the ring is served; its event line or its end (the
	 * worker died) takes the backend to Closing with an error node.
	 * Closed before every blkif-disconnect and when d is freed.
	 */
	bool watching;
	int watch_fd;
	struct bks_watch ring_w;
	char wbuf[XB_RING_EVENT_MAX + 1];
	size_t wlen;
	struct xs_handle *xs;	    /* for the watch's callback */
	const struct xb_conf *conf; /* the same */
	unsigned int scan;	    /* blkstack-xenbus's rescan() that saw it */
	struct xb_dev *next;
};

/* xb_dev_refresh(): the backend directory is gone (not an error). */
#define XB_DEV_GONE 1
/* xb_dev_refresh(): the frontend is ready, but the hotplug script's add
 * has not finished (no hotplug-status "connected" yet): said the first
 * time only; the device stays in InitWait until it has. */
#define XB_DEV_UNSERVED 2

/*
 * Make the device of backend directory base/domid/devid: read and check
 * its frontend-id and frontend nodes, and watch the frontend's state.
 * Called by blkstack-xenbus for every device directory it finds.
 * Returns 0 with *out set (free with xb_dev_free()); XB_DEV_GONE if the
 * directory went away meanwhile; -EINVAL if a node fails its check;
 * another -errno.  err is set on every failure.
 */
int xb_dev_new(struct xs_handle *xs, const char *base, unsigned int domid,
	       unsigned int devid, struct xb_dev **out, struct bks_error *err);

/*
 * Read the device's states and online node and carry out xb_decide()'s
 * step, in one transaction (retried while xenstore says EAGAIN).  Called
 * after every watch event of the device.  *from and *to get the backend
 * state before and after (equal: nothing written).  Returns 0;
 * XB_DEV_GONE if the backend directory is gone; XB_DEV_UNSERVED; -EINVAL
 * if the backend's own nodes are not what a backend has (nothing is
 * written then); another -errno.  err is set on every failure.
 */
int xb_dev_refresh(struct xs_handle *xs, struct xb_dev *d,
		   const struct xb_conf *conf, enum xb_state *from,
		   enum xb_state *to, struct bks_error *err);

/*
 * Take the ring from the worker that serves it (blkif-disconnect), if
 * one does: bounded, and a worker that is gone counts as done.  Closes
 * the blkif-watch connection first, so that our own disconnect is never
 * taken for a lost ring.  Called by xb_dev_refresh() before every step
 * that leaves Connected, and by blkstack-xenbus for the devices it
 * forgets.
 */
void xb_dev_disconnect(struct xb_dev *d, const struct xb_conf *conf);

/* Stop watching (the frontend's state, the blkif-watch connection)
 * and free d (NULL is fine). */
void xb_dev_free(struct xs_handle *xs, struct xb_dev *d);

#endif /* BLKSTACK_XB_DEV_H */
