/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * One vbd3 device in xenstore (xb-dev.h), and the connect and disconnect
 * steps: the frontend's ring handed to the disk's worker over its control
 * socket (blkif-connect, docs/control-protocol.txt) and taken back
 * (blkif-disconnect).  Those calls are the one place the daemon waits on
 * something other than xenstore: each is bounded (XB_CTL_TIMEOUT_MS), and
 * the worker answers connect at once and disconnect once its in-flight
 * requests are done.
 *
 * A connected ring is watched (blkif-watch): a second connection to the
 * worker, kept on the daemon's loop and read without blocking; its one
 * event line (the guest broke the ring, or it was disconnected by someone
 * else) or its end without one (the worker died) is a lost ring, and
 * takes the backend to Closing with the reason, as a failed connect does.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "ctl-client.h"
#include "dec.h"
#include "worker-name.h"
#include "xb-dev.h"
#include "xb-ring.h"

/* Domain ids of guests: below DOMID_FIRST_RESERVED (0x7ff0). */
#define XB_DOMID_MAX 0x7fefu
/* Longest value read from a node of ours or the frontend's state. */
#define XB_VALUE_MAX 64
/* Transactions tried before giving up on EAGAIN. */
#define XB_TRIES 16
/* Longest wait for the worker's answer to blkif-connect/-disconnect. */
#define XB_CTL_TIMEOUT_MS 10000
/* Longest error message written into the backend's error node. */
#define XB_ERROR_MAX 512

/*
 * Read dir/node into buf.  Returns 1 if present, 0 if absent, -EINVAL if
 * longer than size - 1 or holding a NUL, another -errno; err set on
 * failure.
 */
static int read_node(struct xs_handle *xs, xs_transaction_t t, const char *dir,
		     const char *node, char *buf, size_t size,
		     struct bks_error *err)
{
	char path[XB_PATH_MAX];
	unsigned int len = 0;
	char *v = NULL;
	int rc;

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, node) >=
	    sizeof(path)) {
		rc = bks_error_setmsg(err, ENAMETOOLONG, "path %.64s/%s", dir,
				      node);
		goto out;
	}
	v = xs_read(xs, t, path, &len);
	if (!v) {
		if (errno == ENOENT) {
			rc = 0;
			goto out;
		}
		rc = bks_error_set(err, errno ? errno : EIO, "xenstore read %s",
				   path);
		goto out;
	}
	if (len >= size || memchr(v, '\0', len)) {
		rc = bks_error_setmsg(err, EINVAL,
				      "%s: not a value this node holds", path);
		goto out;
	}
	memcpy(buf, v, len);
	buf[len] = '\0';
	rc = 1;
out:
	free(v);
	return rc;
}

static int write_node(struct xs_handle *xs, xs_transaction_t t, const char *dir,
		      const char *node, const char *value,
		      struct bks_error *err)
{
	char path[XB_PATH_MAX];

	if ((size_t)snprintf(path, sizeof(path), "%s/%s", dir, node) >=
	    sizeof(path))
		return bks_error_setmsg(err, ENAMETOOLONG, "path %.64s/%s", dir,
					node);
	if (!xs_write(xs, t, path, value, (unsigned int)strlen(value)))
		return bks_error_set(err, errno ? errno : EIO,
				     "xenstore write %s", path);
	return 0;
}

int xb_dev_new(struct xs_handle *xs, const char *base, unsigned int domid,
	       unsigned int devid, struct xb_dev **out, struct bks_error *err)
{
	struct xb_dev *d = NULL;
	char v[XB_PATH_MAX];
	unsigned int fid;
	int rc;

	d = calloc(1, sizeof(*d));
	if (!d) {
		rc = bks_error_set(err, ENOMEM, "device %u/%u", domid, devid);
		goto out;
	}
	d->domid = domid;
	d->devid = devid;
	d->watch_fd = -1;
	d->xs = xs;
	if ((size_t)snprintf(d->be, sizeof(d->be), "%s/%u/%u", base, domid,
			     devid) >= sizeof(d->be)) {
		rc = bks_error_setmsg(err, ENAMETOOLONG, "backend path %.64s",
				      base);
		goto out;
	}
	/* What libxl writes for a vbd disk's frontend; nothing else is
	 * followed, whatever the node says. */
	snprintf(d->fe, sizeof(d->fe), "/local/domain/%u/device/vbd/%u", domid,
		 devid);
	if ((size_t)snprintf(d->fe_state, sizeof(d->fe_state), "%s/state",
			     d->fe) >= sizeof(d->fe_state)) {
		rc = bks_error_setmsg(err, ENAMETOOLONG, "frontend path");
		goto out;
	}

	rc = read_node(xs, XBT_NULL, d->be, "frontend-id", v, sizeof(v), err);
	if (rc < 0)
		goto out;
	if (rc == 0) {
		rc = XB_DEV_GONE;
		goto out;
	}
	if (dec_parse_u32(v, XB_DOMID_MAX, &fid) < 0 || fid != domid) {
		rc = bks_error_setmsg(err, EINVAL,
				      "%s: frontend-id '%.16s' is not the "
				      "guest's domain %u",
				      d->be, v, domid);
		goto out;
	}
	rc = read_node(xs, XBT_NULL, d->be, "frontend", v, sizeof(v), err);
	if (rc < 0)
		goto out;
	if (rc == 0) {
		rc = XB_DEV_GONE;
		goto out;
	}
	if (strcmp(v, d->fe) != 0) {
		rc = bks_error_setmsg(err, EINVAL,
				      "%s: frontend '%.80s' is not %s", d->be,
				      v, d->fe);
		goto out;
	}
	if (!xs_watch(xs, d->fe_state, d->be)) {
		rc = bks_error_set(err, errno ? errno : EIO,
				   "xenstore watch %s", d->fe_state);
		goto out;
	}
	d->fe_watched = true;
	*out = d;
	d = NULL;
	rc = 0;
out:
	free(d);
	return rc;
}

/* The state in a state node's value; XB_UNKNOWN for one that is not. */
static enum xb_state parse_state(const char *v)
{
	unsigned int n;

	if (dec_parse_u32(v, XB_RECONFIGURED, &n) < 0)
		return XB_UNKNOWN;
	return (enum xb_state)n;
}

/* ---- the connect step ---------------------------------------------------- */

/* xb_ring_parse()'s lookup: plain xenstore reads (outside a transaction). */
struct ring_lookup {
	struct xs_handle *xs;
	const struct xb_dev *d;
	char buf[XB_PATH_MAX];
};

static int ring_lookup(void *opaque, int be, const char *node, const char **val,
		       struct bks_error *err)
{
	struct ring_lookup *l = opaque;
	int rc = read_node(l->xs, XBT_NULL, be ? l->d->be : l->d->fe, node,
			   l->buf, sizeof(l->buf), err);

	if (rc == 1)
		*val = l->buf;
	return rc;
}

/*
 * The disk's worker, as the hotplug script's add left it: 1 with name
 * set once hotplug-status is "connected" and blkstack-worker names a
 * worker; 0 while the script has not finished; -errno with err set.
 */
static int worker_of(struct xs_handle *xs, const struct xb_dev *d, char *name,
		     size_t size, struct bks_error *err)
{
	char v[XB_VALUE_MAX];
	int rc;

	rc =
	    read_node(xs, XBT_NULL, d->be, "hotplug-status", v, sizeof(v), err);
	if (rc <= 0 || strcmp(v, "connected") != 0) {
		bks_error_clear(err);
		return rc < 0 && rc != -EINVAL ? rc : 0;
	}
	rc = read_node(xs, XBT_NULL, d->be, "blkstack-worker", name, size, err);
	if (rc == 0)
		return bks_error_setmsg(err, ENOENT,
					"%s: hotplug-status is connected but "
					"no blkstack-worker names the disk's "
					"worker (not blkstack's script?)",
					d->be);
	if (rc < 0)
		return rc;
	if (!worker_name_valid(name))
		return bks_error_setmsg(err, EINVAL,
					"%s: blkstack-worker '%.64s' is not a "
					"worker's name",
					d->be, name);
	return 1;
}

/* Send cmd to worker name; 0, or -errno with err "worker NAME: ...". */
static int worker_call(const struct xb_conf *conf, const char *name,
		       const char *cmd, struct ctl_client *cl,
		       struct bks_error *err)
{
	int rc =
	    ctl_client_open(cl, conf->rundir, name, XB_CTL_TIMEOUT_MS, err);

	if (rc == 0)
		rc = ctl_client_call(cl, cmd, err);
	if (rc < 0)
		bks_error_prepend(err, "worker %s: ", name);
	return rc;
}

/*
 * Write the reply's nodes and Connected, in one transaction, if the
 * backend is still in InitWait.  Returns 1 (written), 0 (the backend
 * moved meanwhile: nothing written), or -errno.
 */
static int write_connected(struct xs_handle *xs, const struct xb_dev *d,
			   const struct ctl_client *cl, struct bks_error *err)
{
	static const struct {
		const char *node, *key;
	} keys[] = {
	    {"sectors", "sectors"},
	    {"sector-size", "sector_size"},
	    {"physical-sector-size", "physical_sector_size"},
	    {"info", "info"},
	    {"feature-flush-cache", "feature_flush_cache"},
	    {"feature-discard", "feature_discard"},
	    {"discard-granularity", "discard_granularity"},
	    {"discard-alignment", "discard_alignment"},
	    {"feature-max-indirect-segments", "feature_max_indirect_segments"},
	};
	char v[XB_VALUE_MAX];
	int rc = 0;

	for (int tries = 0; tries < XB_TRIES; tries++) {
		xs_transaction_t t = xs_transaction_start(xs);

		if (t == XBT_NULL)
			return bks_error_set(err, errno ? errno : EIO,
					     "xenstore transaction for %s",
					     d->be);
		rc = read_node(xs, t, d->be, "state", v, sizeof(v), err);
		if (rc <= 0 || strcmp(v, "2") != 0) {
			xs_transaction_end(xs, t, true);
			return rc < 0 ? rc : 0;
		}
		rc = write_node(xs, t, d->be, "feature-barrier", "0", err);
		for (size_t i = 0; rc == 0 && i < sizeof(keys) / sizeof(*keys);
		     i++) {
			uint64_t n = ctl_reply_u64(cl, 0, keys[i].key);

			/* Discard's details only with discard; indirect
			 * segments only when offered. */
			if ((!strncmp(keys[i].node, "discard-", 8) &&
			     !ctl_reply_u64(cl, 0, "feature_discard")) ||
			    (!strcmp(keys[i].node,
				     "feature-max-indirect-segments") &&
			     n == 0))
				continue;
			snprintf(v, sizeof(v), "%llu", (unsigned long long)n);
			rc = write_node(xs, t, d->be, keys[i].node, v, err);
		}
		if (rc == 0)
			rc = write_node(xs, t, d->be, "state", "4", err);
		if (rc < 0) {
			xs_transaction_end(xs, t, true);
			return rc;
		}
		if (xs_transaction_end(xs, t, false))
			return 1;
		if (errno != EAGAIN)
			return bks_error_set(err, errno ? errno : EIO,
					     "xenstore commit for %s", d->be);
	}
	return bks_error_setmsg(err, EAGAIN,
				"%s: xenstore kept changing (%d transactions)",
				d->be, XB_TRIES);
}

/*
 * The connect failed, or a served ring was lost: say why in the
 * backend's error node and go to Closing (the frontend closes, and the
 * state model takes the backend to Closed), as a kernel backend's
 * xenbus_dev_fatal() does.  Best effort.
 */
static void dev_fatal(struct xs_handle *xs, const struct xb_dev *d,
		      const struct bks_error *why)
{
	char msg[XB_ERROR_MAX + 1], path[XB_PATH_MAX];
	size_t n;

	snprintf(msg, sizeof(msg), "%s", why->msg);
	for (n = 0; msg[n]; n++)
		if ((unsigned char)msg[n] < 0x20 || msg[n] == 0x7f)
			msg[n] = '?';
	if ((size_t)snprintf(path, sizeof(path), "%s/error", d->be) <
	    sizeof(path))
		xs_write(xs, XBT_NULL, path, msg, (unsigned int)n);
	if ((size_t)snprintf(path, sizeof(path), "%s/state", d->be) <
	    sizeof(path))
		xs_write(xs, XBT_NULL, path, "5", 1);
}

/* ---- the ring's watch (blkif-watch) ---------------------------------------
 */

/* Stop watching the ring: the loop's watch and the connection. */
static void watch_close(struct xb_dev *d)
{
	if (!d->watching)
		return;
	bks_watch_del(&d->ring_w);
	close(d->watch_fd);
	d->watch_fd = -1;
	d->watching = false;
	d->wlen = 0;
}

/*
 * A complete event line in d->wbuf: 1 with err saying how the ring was
 * lost; 0 if no line is complete yet.
 */
static int watch_line(struct xb_dev *d, struct bks_error *err)
{
	char *nl = memchr(d->wbuf, '\n', d->wlen);
	char why[XB_ERROR_MAX];
	bool broken = false;

	if (!nl) {
		if (d->wlen < XB_RING_EVENT_MAX)
			return 0;
		bks_error_setmsg(err, EPROTO,
				 "blkif-watch: a line longer than %u bytes",
				 XB_RING_EVENT_MAX);
		return 1;
	}
	if (xb_ring_event_parse(d->wbuf, (size_t)(nl - d->wbuf), d->worker,
				&broken, why, sizeof(why), err) == 0)
		bks_error_setmsg(err, broken ? EPROTO : ENOTCONN, "%s", why);
	return 1;
}

/*
 * The ring is lost (err says how): no more watch, the ring taken back
 * from a worker that still holds it (a broken ring; a dead worker holds
 * none), then, if the backend is still Connected, the error node and
 * Closing: the connect's failure path.
 */
static void ring_lost(struct xb_dev *d, const struct xb_conf *conf,
		      struct bks_error *err)
{
	struct bks_error rerr = {0};
	char v[XB_VALUE_MAX];

	watch_close(d);
	bks_error_prepend(err, "%s: worker %s: ", d->be, d->worker);
	xb_dev_disconnect(d, conf);
	if (read_node(d->xs, XBT_NULL, d->be, "state", v, sizeof(v), &rerr) ==
		1 &&
	    strcmp(v, "4") == 0)
		dev_fatal(d->xs, d, err);
}

/* The watch connection is readable, or closed: read what it has. */
static void watch_event(struct bks_watch *w, uint32_t events)
{
	struct xb_dev *d = w->opaque;
	struct bks_error err = {0};

	(void)events;
	for (;;) {
		ssize_t n = recv(d->watch_fd, d->wbuf + d->wlen,
				 XB_RING_EVENT_MAX - d->wlen, MSG_DONTWAIT);

		if (n > 0) {
			d->wlen += (size_t)n;
			if (watch_line(d, &err))
				break;
			continue;
		}
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		/* The end (or a reset) with no event: the worker is gone. */
		bks_error_setmsg(&err, EPIPE,
				 "the worker died (its blkif-watch connection "
				 "ended while it served the ring)");
		break;
	}
	ring_lost(d, d->conf, &err);
	fprintf(stderr, "blkstack-xenbus: %s\n", err.msg);
}

/*
 * After the connect: watch the ring (blkif-watch on a connection of its
 * own, answered at once, then kept on conf's loop).  Returns 0 (watched;
 * or not, for a worker that has no blkif-watch: said), or -errno with err
 * (the ring is lost already, or the watch failed).
 */
static int watch_open(struct xb_dev *d, const struct xb_conf *conf,
		      struct bks_error *err)
{
	struct ctl_client cl = {0};
	size_t line = 0;
	const char *buf;
	int rc;

	if (!conf->loop)
		return 0;
	rc = ctl_client_open(&cl, conf->rundir, d->worker, XB_CTL_TIMEOUT_MS,
			     err);
	if (rc == 0)
		rc = ctl_client_call(&cl, "blkif-watch", err);
	if (rc == -ENOSYS) {
		/* A worker from before blkif-watch: served, not watched. */
		fprintf(stderr,
			"blkstack-xenbus: %s: worker %s has no blkif-watch: "
			"a lost ring will not be noticed\n",
			d->be, d->worker);
		bks_error_clear(err);
		rc = 0;
		goto out;
	}
	if (rc < 0) {
		bks_error_prepend(err, "blkif-watch: ");
		goto out;
	}
	buf = ctl_reply_line(&cl, &line);
	/* What came after the reply: the start of the event, if any. */
	d->wlen = cl.len - line - 1;
	if (d->wlen > XB_RING_EVENT_MAX) {
		d->wlen = 0;
		rc = bks_error_setmsg(err, EPROTO,
				      "blkif-watch: a line longer than %u "
				      "bytes",
				      XB_RING_EVENT_MAX);
		goto out;
	}
	memcpy(d->wbuf, buf + line + 1, d->wlen);
	rc = bks_watch_add(conf->loop, &d->ring_w, cl.fd, EPOLLIN, watch_event,
			   d);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "blkif-watch: watch");
		goto out;
	}
	d->watch_fd = cl.fd;
	cl.fd = -1;
	d->watching = true;
	d->conf = conf;
	/* Lost already (a broken ring): its event came with the reply. */
	if (watch_line(d, err))
		rc = -(err->code ? err->code : EPROTO);
out:
	ctl_client_close(&cl);
	return rc;
}

/*
 * The connect step (backend InitWait, frontend ready): once the hotplug
 * script's add has finished, read and check the frontend's ring nodes,
 * hand them to the worker, and write what it answers and Connected.
 * Returns 0 (connected, or still waiting: *to says), XB_DEV_UNSERVED
 * (waiting, said once), or -errno with err (the backend is then in
 * Closing with an error node).
 */
static int connect_step(struct xs_handle *xs, struct xb_dev *d,
			const struct xb_conf *conf, enum xb_state *to,
			struct bks_error *err)
{
	char name[XB_VALUE_MAX + 1], refs[XB_RING_REFS_MAX * 11 + 1];
	char cmd[sizeof(refs) + 128];
	struct ctl_client cl = {0};
	struct ring_lookup *l = NULL;
	struct xb_ring r;
	int rc;

	rc = worker_of(xs, d, name, sizeof(name), err);
	if (rc == 0) {
		rc = d->said_unserved ? 0 : XB_DEV_UNSERVED;
		d->said_unserved = true;
		goto out;
	}
	if (rc < 0)
		goto fail;
	l = calloc(1, sizeof(*l));
	if (!l) {
		rc = bks_error_set(err, ENOMEM, "%s", d->be);
		goto fail;
	}
	l->xs = xs;
	l->d = d;
	rc = xb_ring_parse(ring_lookup, l, conf->max_ring_page_order, &r, err);
	if (rc == 0)
		rc = xb_ring_refs_format(&r, refs, sizeof(refs));
	if (rc < 0) {
		bks_error_prepend(err, "%s: the frontend's ring: ", d->be);
		goto fail;
	}
	snprintf(cmd, sizeof(cmd), "blkif-connect %u %u %s %s %c", d->domid,
		 r.port, refs, r.protocol, r.mode);
	rc = worker_call(conf, name, cmd, &cl, err);
	if (rc < 0) {
		bks_error_prepend(err, "%s: ", d->be);
		goto fail;
	}
	d->served = true;
	snprintf(d->worker, sizeof(d->worker), "%s", name);
	rc = write_connected(xs, d, &cl, err);
	if (rc == 1) {
		*to = XB_CONNECTED;
		rc = watch_open(d, conf, err);
		if (rc < 0) {
			ring_lost(d, conf, err);
			*to = XB_CLOSING;
		}
		goto out;
	}
	/* Moved meanwhile, or the write failed: take the ring back. */
	if (rc < 0)
		dev_fatal(xs, d, err);
	xb_dev_disconnect(d, conf);
	goto out;
fail:
	dev_fatal(xs, d, err);
	*to = XB_CLOSING;
out:
	ctl_client_close(&cl);
	free(l);
	return rc;
}

void xb_dev_disconnect(struct xb_dev *d, const struct xb_conf *conf)
{
	struct ctl_client cl = {0};
	struct bks_error err = {0};

	/* First: our own disconnect is no lost ring. */
	watch_close(d);
	if (!d->served)
		return;
	d->served = false;
	/* A worker that is gone holds no ring. */
	if (worker_call(conf, d->worker, "blkif-disconnect", &cl, &err) < 0 &&
	    err.code != ENOENT && err.code != ECONNREFUSED)
		fprintf(stderr, "blkstack-xenbus: %s: %s\n", d->be, err.msg);
	ctl_client_close(&cl);
}

int xb_dev_refresh(struct xs_handle *xs, struct xb_dev *d,
		   const struct xb_conf *conf, enum xb_state *from,
		   enum xb_state *to, struct bks_error *err)
{
	xs_transaction_t t = XBT_NULL;
	struct xb_view view = {0};
	struct xb_step step;
	char v[XB_VALUE_MAX];
	int rc = 0;

	for (int tries = 0; tries < XB_TRIES; tries++) {
		t = xs_transaction_start(xs);
		if (t == XBT_NULL) {
			rc =
			    bks_error_set(err, errno ? errno : EIO,
					  "xenstore transaction for %s", d->be);
			goto out;
		}
		rc = read_node(xs, t, d->be, "state", v, sizeof(v), err);
		if (rc <= 0) {
			/* libxl writes the directory and its state at once:
			 * no state, no device. */
			rc = rc == 0 ? XB_DEV_GONE : rc;
			goto out;
		}
		view.backend = parse_state(v);
		if (view.backend == XB_UNKNOWN) {
			rc = bks_error_setmsg(err, EINVAL,
					      "%s: state '%.16s' is not a "
					      "backend state",
					      d->be, v);
			goto out;
		}
		rc = read_node(xs, t, d->be, "online", v, sizeof(v), err);
		if (rc < 0)
			goto out;
		view.online = rc == 1 && strcmp(v, "1") == 0;
		/* The guest's: anything but a state is no state. */
		rc = read_node(xs, t, d->fe, "state", v, sizeof(v), err);
		if (rc < 0 && rc != -EINVAL)
			goto out;
		view.frontend = rc == 1 ? parse_state(v) : XB_UNKNOWN;
		view.served = d->served;

		step = xb_decide(&view);
		*from = *to = view.backend;
		if (step.connect) {
			/* Outside the transaction: it waits on the worker. */
			xs_transaction_end(xs, t, true);
			t = XBT_NULL;
			rc = connect_step(xs, d, conf, to, err);
			goto out;
		}
		if (step.disconnect) {
			/* The ring first, then the state (decided anew). */
			xs_transaction_end(xs, t, true);
			t = XBT_NULL;
			xb_dev_disconnect(d, conf);
			continue;
		}
		if (step.next == view.backend) {
			rc = 0;
			goto out;
		}
		if (step.next == XB_INITWAIT) {
			char order[16];

			snprintf(order, sizeof(order), "%u",
				 conf->max_ring_page_order);
			rc = write_node(xs, t, d->be, "max-ring-page-order",
					order, err);
			if (rc < 0)
				goto out;
			d->said_unserved = false;
		}
		snprintf(v, sizeof(v), "%d", (int)step.next);
		rc = write_node(xs, t, d->be, "state", v, err);
		if (rc < 0)
			goto out;
		if (xs_transaction_end(xs, t, false)) {
			t = XBT_NULL;
			*to = step.next;
			rc = 0;
			goto out;
		}
		t = XBT_NULL;
		if (errno != EAGAIN) {
			rc = bks_error_set(err, errno ? errno : EIO,
					   "xenstore commit for %s", d->be);
			goto out;
		}
	}
	rc = bks_error_setmsg(err, EAGAIN,
			      "%s: xenstore kept changing (%d transactions)",
			      d->be, XB_TRIES);
out:
	if (t != XBT_NULL)
		xs_transaction_end(xs, t, true);
	return rc;
}

void xb_dev_free(struct xs_handle *xs, struct xb_dev *d)
{
	if (!d)
		return;
	watch_close(d);
	if (d->fe_watched)
		xs_unwatch(xs, d->fe_state, d->be);
	free(d);
}
