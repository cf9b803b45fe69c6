/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The supervisor's hotplug-error (sup-xs.h). */
#include <errno.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <xenstore.h>

#include "sup-xs.h"

int sup_xs_write_error(const char *path, const char *msg, struct bks_error *err)
{
	struct xs_handle *xs = NULL;
	xs_transaction_t t;
	char parent[PATH_MAX];
	const char *slash = strrchr(path, '/');
	unsigned int len;
	void *v;
	int rc;

	/* Relative (v1's XENBUS_PATH): xenstore resolves it in our domain. */
	if (!slash || slash == path || (size_t)(slash - path) >= sizeof(parent))
		return bks_error_setmsg(
		    err, EINVAL, "xenstore path '%.64s' has no parent", path);
	snprintf(parent, sizeof(parent), "%.*s", (int)(slash - path), path);
	xs = xs_open(0);
	if (!xs)
		return bks_error_set(err, errno ? errno : EIO, "xs_open");
	for (int tries = 0; tries < 8; tries++) {
		t = xs_transaction_start(xs);
		if (t == XBT_NULL) {
			rc = bks_error_set(err, errno, "xenstore transaction");
			goto out;
		}
		/* Never create a directory the toolstack did not make. */
		v = xs_read(xs, t, parent, &len);
		if (!v) {
			rc = bks_error_set(err, errno, "xenstore read %s",
					   parent);
			xs_transaction_end(xs, t, true);
			goto out;
		}
		free(v);
		if (!xs_write(xs, t, path, msg, (unsigned int)strlen(msg))) {
			rc = bks_error_set(err, errno, "xenstore write %s",
					   path);
			xs_transaction_end(xs, t, true);
			goto out;
		}
		if (xs_transaction_end(xs, t, false)) {
			rc = 0;
			goto out;
		}
		if (errno != EAGAIN) {
			rc = bks_error_set(err, errno, "xenstore commit %s",
					   path);
			goto out;
		}
	}
	rc = bks_error_setmsg(err, EAGAIN,
			      "xenstore write %s: kept conflicting", path);
out:
	xs_close(xs);
	return rc;
}
