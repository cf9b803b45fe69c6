/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* One vbd3 device in xenstore (xb-dev.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xb-dev.h"

/* Domain ids of guests: below DOMID_FIRST_RESERVED (0x7ff0). */
#define XB_DOMID_MAX 0x7fefu
/* Longest value read from a node of ours or the frontend's state. */
#define XB_VALUE_MAX 64
/* Transactions tried before giving up on EAGAIN. */
#define XB_TRIES 16

int xb_parse_uint(const char *s, unsigned int max, unsigned int *out)
{
	unsigned long v = 0;

	if (!s[0] || (s[0] == '0' && s[1]))
		return -EINVAL;
	for (const char *p = s; *p; p++) {
		if (*p < '0' || *p > '9')
			return -EINVAL;
		v = v * 10 + (unsigned long)(*p - '0');
		if (v > max)
			return -EINVAL;
	}
	*out = (unsigned int)v;
	return 0;
}

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
	if (xb_parse_uint(v, XB_DOMID_MAX, &fid) < 0 || fid != domid) {
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

	if (xb_parse_uint(v, XB_RECONFIGURED, &n) < 0)
		return XB_UNKNOWN;
	return (enum xb_state)n;
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
			/* No ring server yet (docs/ring-backend.txt): the
			 * device waits in InitWait. */
			rc = d->said_unserved ? 0 : XB_DEV_UNSERVED;
			d->said_unserved = true;
			goto out;
		}
		if (step.disconnect)
			d->served = false;
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
	if (d->fe_watched)
		xs_unwatch(xs, d->fe_state, d->be);
	free(d);
}
