/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Thin xenstore access for the hotplug helper: every call names the
 * operation and the path in its error, and transactions are retried on
 * conflict in one place.
 */
#ifndef BLKSTACK_HP_XS_H
#define BLKSTACK_HP_XS_H

#include <stdbool.h>
#include <stddef.h>
#include <xenstore.h>

#include "blkstack/error.h"

/* How many times a conflicting transaction is retried before giving up. */
#define HP_XS_TXN_RETRIES 32

/* Connect to xenstored.  Returns the handle, or NULL with err set. */
struct xs_handle *hp_xs_open(struct bks_error *err);

/*
 * Read path into a malloc'd NUL-terminated string (*out, caller frees).
 * Returns 0, -ENOENT if the node does not exist (err still set), or
 * another -errno.
 */
int hp_xs_read(struct xs_handle *xs, xs_transaction_t t, const char *path,
	       char **out, struct bks_error *err);

/* Returns 1 if path exists, 0 if not, -errno on failure. */
int hp_xs_exists(struct xs_handle *xs, xs_transaction_t t, const char *path,
		 struct bks_error *err);

/* Write a string value.  Returns 0 or -errno. */
int hp_xs_write(struct xs_handle *xs, xs_transaction_t t, const char *path,
		const char *value, struct bks_error *err);

/* Remove path and its children; a missing node is success. */
int hp_xs_rm(struct xs_handle *xs, xs_transaction_t t, const char *path,
	     struct bks_error *err);

/*
 * Body of a transaction: does its reads and writes under t and returns 0
 * or -errno (with err set).  It may run several times, so it must not
 * have effects outside xenstore.
 */
typedef int hp_xs_txn_fn(struct xs_handle *xs, xs_transaction_t t, void *arg,
			 struct bks_error *err);

/*
 * Run fn in a transaction and commit it, retrying on EAGAIN (another
 * writer touched what we read) up to HP_XS_TXN_RETRIES times.  If fn fails
 * the transaction is aborted.  Returns 0 or -errno.
 */
int hp_xs_transaction(struct xs_handle *xs, hp_xs_txn_fn *fn, void *arg,
		      struct bks_error *err);

/*
 * The xenstore path base + "/" + name into buf.  Returns 0 or
 * -ENAMETOOLONG with err set.
 */
int hp_child_path(char *buf, size_t size, const char *base, const char *name,
		  struct bks_error *err);

#endif /* BLKSTACK_HP_XS_H */
