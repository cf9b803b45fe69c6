/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * xs-toolstack: a test toolstack that runs a hotplug script the way libxl
 * does, against a private xenstored.  It uses libxenstore only, never
 * blkstack's own code, since it is what tests blkstack.
 *
 * Every function that can fail returns 0 (or a non-negative result) on
 * success and a negative errno on failure, and prints the failure once,
 * on stderr, where it happens: "xs-toolstack: xenstore write PATH: ...".
 */
#ifndef XS_TOOLSTACK_H
#define XS_TOOLSTACK_H

#include <stdbool.h>
#include <xenstore.h>

#define TS_NAME "xs-toolstack"

/* Exit codes of a *-run command that are not the script's own. */
#define TS_EXIT_TIMEOUT	 124 /* killed after --timeout, as timeout(1) */
#define TS_EXIT_INTERNAL 125 /* the driver itself failed */
#define TS_EXIT_NOEXEC	 126 /* the script exists but cannot be executed */
#define TS_EXIT_NOENT	 127 /* the script does not exist */

/* Print "xs-toolstack: MESSAGE" on stderr. */
void ts_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* ---- xs-store.c: libxenstore, with errors reported -------------------- */

/* Connect to xenstored (XENSTORED_PATH honoured by libxenstore). */
int xst_open(struct xs_handle **xsp);

/* Write VALUE to DIR/NODE (or to DIR itself when NODE is NULL). */
int xst_write(struct xs_handle *xs, xs_transaction_t t, const char *dir,
	      const char *node, const char *value);

/*
 * Create PATH afresh, as libxl__device_generic_add() does: remove whatever
 * is there, mkdir, then set the N permissions PERMS (first: owner and
 * everybody else).
 */
int xst_mkdir(struct xs_handle *xs, xs_transaction_t t, const char *path,
	      struct xs_permissions *perms, unsigned int n);

/* Remove PATH and everything below it; a missing PATH is not an error. */
int xst_rm(struct xs_handle *xs, xs_transaction_t t, const char *path);

/*
 * Read PATH into a malloc'ed string *VALUE.  -ENOENT is returned without
 * a message, so that the caller can say what the absence means; every
 * other failure is printed.
 */
int xst_read(struct xs_handle *xs, const char *path, char **value);

/*
 * Run FN in one transaction, WHAT naming it in messages.  The transaction
 * is committed when FN returns 0, retried when the commit says EAGAIN and
 * abandoned when FN fails (FN's error is returned; FN printed it).
 */
typedef int (*xst_txn_fn)(struct xs_handle *xs, xs_transaction_t t,
			  const void *arg);
int xst_transact(struct xs_handle *xs, const char *what, xst_txn_fn fn,
		 const void *arg);

/* ---- xs-run.c: running the hotplug script ------------------------------ */

struct xst_run {
	const char *mode;	/* "v1" or "v2", for messages */
	const char *script;	/* executed as argv[0], no PATH search */
	const char *action;	/* argv[1] */
	const char *const *set; /* "NAME=value" added, NULL-terminated */
	unsigned int timeout;	/* seconds */
	bool quiet;		/* no progress line on stdout */
};

/*
 * Run the script as libxl does: fork and execve(script, {script, action}),
 * the inherited environment minus the hotplug variables plus r->set,
 * stdin /dev/null, stdout and stderr inherited, and a deadline of
 * r->timeout seconds after which the script is killed with SIGKILL.
 *
 * Returns 0 when the script ran and was reaped: *status is its exit
 * status, or 128 + the signal that killed it.  Returns -errno when it could
 * not be run or was killed at the deadline (-ETIMEDOUT); the error is
 * printed and *status is what a *-run command exits with (TS_EXIT_*).
 */
int xst_run(const struct xst_run *r, int *status);

#endif /* XS_TOOLSTACK_H */
