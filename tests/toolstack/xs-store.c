/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * xs-toolstack: the few libxenstore operations a toolstack needs, each
 * reporting its own failure with the path it failed on.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "xs-toolstack.h"

/* Commit attempts before a transaction that keeps conflicting gives up. */
#define XST_TXN_ATTEMPTS 100

/* errno after a failed libxenstore call, never 0. */
static int xs_errno(void)
{
	return errno ? errno : EIO;
}

int xst_open(struct xs_handle **xsp)
{
	struct xs_handle *xs = NULL;
	const char *where = getenv("XENSTORED_PATH");
	int flags;
	int ret = 0;

	*xsp = NULL;
	xs = xs_open(0);
	if (!xs) {
		ret = -xs_errno();
		ts_err("xenstore open %s: %s", where ? where : "(default)",
		       strerror(-ret));
		goto out;
	}
	/* The scripts we run must not inherit our connection. */
	flags = fcntl(xs_fileno(xs), F_GETFD);
	if (flags < 0 || fcntl(xs_fileno(xs), F_SETFD, flags | FD_CLOEXEC)) {
		ret = -errno;
		ts_err("xenstore connection: set close-on-exec: %s",
		       strerror(-ret));
		xs_close(xs);
		goto out;
	}
	*xsp = xs;
out:
	return ret;
}

int xst_write(struct xs_handle *xs, xs_transaction_t t, const char *dir,
	      const char *node, const char *value)
{
	char *path = NULL;
	int ret = 0;

	if (!node) {
		path = strdup(dir);
	} else if (asprintf(&path, "%s/%s", dir, node) < 0) {
		path = NULL;
	}
	if (!path) {
		ret = -ENOMEM;
		ts_err("xenstore write %s/%s: %s", dir, node ? node : "",
		       strerror(-ret));
		goto out;
	}
	if (!xs_write(xs, t, path, value, strlen(value))) {
		ret = -xs_errno();
		ts_err("xenstore write %s: %s", path, strerror(-ret));
		goto out;
	}
out:
	free(path);
	return ret;
}

int xst_rm(struct xs_handle *xs, xs_transaction_t t, const char *path)
{
	int ret = 0;

	if (!xs_rm(xs, t, path) && errno != ENOENT) {
		ret = -xs_errno();
		ts_err("xenstore rm %s: %s", path, strerror(-ret));
		goto out;
	}
out:
	return ret;
}

int xst_mkdir(struct xs_handle *xs, xs_transaction_t t, const char *path,
	      struct xs_permissions *perms, unsigned int n)
{
	int ret = 0;

	ret = xst_rm(xs, t, path);
	if (ret)
		goto out;
	if (!xs_mkdir(xs, t, path)) {
		ret = -xs_errno();
		ts_err("xenstore mkdir %s: %s", path, strerror(-ret));
		goto out;
	}
	if (!xs_set_permissions(xs, t, path, perms, n)) {
		ret = -xs_errno();
		ts_err("xenstore set permissions %s: %s", path, strerror(-ret));
		goto out;
	}
out:
	return ret;
}

int xst_read(struct xs_handle *xs, const char *path, char **value)
{
	unsigned int len = 0;
	int ret = 0;

	*value = xs_read(xs, XBT_NULL, path, &len);
	if (!*value) {
		ret = -xs_errno();
		if (ret != -ENOENT)
			ts_err("xenstore read %s: %s", path, strerror(-ret));
		goto out;
	}
out:
	return ret;
}

int xst_transact(struct xs_handle *xs, const char *what, xst_txn_fn fn,
		 const void *arg)
{
	xs_transaction_t t = XBT_NULL;
	int attempt;
	int ret = 0;

	for (attempt = 1;; attempt++) {
		t = xs_transaction_start(xs);
		if (t == XBT_NULL) {
			ret = -xs_errno();
			ts_err("xenstore transaction start (%s): %s", what,
			       strerror(-ret));
			goto out;
		}
		ret = fn(xs, t, arg);
		if (ret) {
			/* fn reported it; nothing of it must be committed. */
			xs_transaction_end(xs, t, true);
			goto out;
		}
		if (xs_transaction_end(xs, t, false))
			break;
		ret = -xs_errno();
		if (ret != -EAGAIN) {
			ts_err("xenstore transaction commit (%s): %s", what,
			       strerror(-ret));
			goto out;
		}
		if (attempt == XST_TXN_ATTEMPTS) {
			ts_err("xenstore transaction commit (%s): still "
			       "conflicting after %d attempts: %s",
			       what, attempt, strerror(-ret));
			goto out;
		}
	}
	ret = 0;
out:
	return ret;
}
