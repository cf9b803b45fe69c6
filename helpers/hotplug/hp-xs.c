/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* xenstore access with context: see hp-xs.h. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hp-xs.h"

struct xs_handle *hp_xs_open(struct bks_error *err)
{
	const char *where = getenv("XENSTORED_PATH");
	struct xs_handle *xs;

	xs = xs_open(0);
	if (!xs) {
		if (where && *where)
			bks_error_set(err, errno,
				      "cannot connect to xenstored at %s "
				      "(XENSTORED_PATH)",
				      where);
		else
			bks_error_set(err, errno,
				      "cannot connect to xenstored (its socket "
				      "or /dev/xen/xenbus)");
	}
	return xs;
}

int hp_xs_read(struct xs_handle *xs, xs_transaction_t t, const char *path,
	       char **out, struct bks_error *err)
{
	unsigned int len;
	char *v;

	*out = NULL;
	v = xs_read(xs, t, path, &len);
	if (!v)
		return bks_error_set(err, errno, "xenstore read %s", path);
	/* A value is bytes: one with a NUL would be cut short as a string. */
	if (memchr(v, '\0', len)) {
		size_t at = strlen(v);

		free(v);
		return bks_error_setmsg(err, EINVAL,
					"xenstore value %s has a NUL byte at "
					"offset %zu",
					path, at);
	}
	*out = v;
	return 0;
}

int hp_xs_exists(struct xs_handle *xs, xs_transaction_t t, const char *path,
		 struct bks_error *err)
{
	unsigned int len;
	char *v;

	v = xs_read(xs, t, path, &len);
	if (v) {
		free(v);
		return 1;
	}
	if (errno == ENOENT)
		return 0;
	return bks_error_set(err, errno, "xenstore read %s", path);
}

int hp_xs_write(struct xs_handle *xs, xs_transaction_t t, const char *path,
		const char *value, struct bks_error *err)
{
	if (!xs_write(xs, t, path, value, (unsigned int)strlen(value)))
		return bks_error_set(err, errno, "xenstore write %s", path);
	return 0;
}

int hp_xs_rm(struct xs_handle *xs, xs_transaction_t t, const char *path,
	     struct bks_error *err)
{
	if (!xs_rm(xs, t, path) && errno != ENOENT)
		return bks_error_set(err, errno, "xenstore rm %s", path);
	return 0;
}

int hp_xs_transaction(struct xs_handle *xs, hp_xs_txn_fn *fn, void *arg,
		      struct bks_error *err)
{
	for (int attempt = 0; attempt < HP_XS_TXN_RETRIES; attempt++) {
		xs_transaction_t t = xs_transaction_start(xs);
		int rc;

		if (t == XBT_NULL)
			return bks_error_set(err, errno,
					     "xenstore transaction start");
		rc = fn(xs, t, arg, err);
		if (rc < 0) {
			xs_transaction_end(xs, t, true);
			return rc;
		}
		if (xs_transaction_end(xs, t, false))
			return 0;
		if (errno != EAGAIN)
			return bks_error_set(err, errno,
					     "xenstore transaction commit");
	}
	return bks_error_setmsg(err, EAGAIN,
				"xenstore transaction still conflicting after "
				"%d attempts",
				HP_XS_TXN_RETRIES);
}

int hp_child_path(char *buf, size_t size, const char *base, const char *name,
		  struct bks_error *err)
{
	int n = snprintf(buf, size, "%s/%s", base, name);

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"xenstore path %s/%s is too long", base,
					name);
	return 0;
}
