/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The control client: one connection to a worker's ctl.sock, commands
 * and their replies (docs/control-protocol.txt), with bounded waits.
 * Used by blkstack-ctl and by the hotplug helper (through worker-run.h
 * and worker-list.h, which start, stop and list workers with it).
 *
 * Errors: a failure reply carries the worker's errno ("errno" by name,
 * "errnum" by number) and its message; ctl_client_call() returns that
 * errno negated and the message in err.  Replies of workers older than
 * that extension give -EIO.
 */
#ifndef BLKSTACK_CTL_CLIENT_H
#define BLKSTACK_CTL_CLIENT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "blkstack/error.h"
#include "json.h"
#include "worker-name.h"

/* How long one command may take the worker to answer, by default. */
#define CTL_CALL_TIMEOUT_MS 30000
/* Largest reply line accepted from a worker. */
#define CTL_REPLY_MAX (4u << 20)

/* A connection to a worker's control socket. */
struct ctl_client {
	int fd;
	char name[WORKER_NAME_MAX + 1];
	int timeout_ms; /* for each reply */
	char *buf;	/* received bytes; the current reply line first */
	size_t len, cap;
	size_t line_len;     /* of the current reply, without its "\n" */
	bool have_line;	     /* buf starts with a reply already handled */
	struct json_doc doc; /* the current reply, parsed; token 0 */
};

/*
 * Connect to worker name of rundir.  Returns 0, or -errno with err saying
 * why in the words an operator needs, without naming the worker (the
 * caller does): -ENOENT "not running (no DIR/NAME/ctl.sock)",
 * -ECONNREFUSED "connection refused (stale socket; the worker is dead)",
 * else "connect PATH: REASON".  cl is ready for ctl_client_close() in
 * every case.
 */
int ctl_client_open(struct ctl_client *cl, const char *rundir, const char *name,
		    int timeout_ms, struct bks_error *err);

/* Close the connection and free the reply.  Safe to call twice. */
void ctl_client_close(struct ctl_client *cl);

/*
 * Send the command line cmd (without "\n") and read its reply into
 * cl->doc.  Returns 0 if the reply says "ok":true; else -errno: the
 * worker's errno with err holding its message (without the "NAME: " it
 * starts with), or this side's failure (-ETIMEDOUT: no reply in time;
 * -ECONNRESET: closed without a reply; -EPROTO: not a JSON object).
 */
int ctl_client_call(struct ctl_client *cl, const char *cmd,
		    struct bks_error *err);

/* The current reply line as received, and its length. */
const char *ctl_reply_line(const struct ctl_client *cl, size_t *len);

/* Field key of object obj (0: the reply) as a number, 0 if absent. */
uint64_t ctl_reply_u64(const struct ctl_client *cl, int obj, const char *key);

/* The same as a string into buf, "?" if absent, sanitised; returns buf. */
const char *ctl_reply_str(const struct ctl_client *cl, int obj, const char *key,
			  char *buf, size_t size);

/*
 * One command on a fresh connection, for commands whose reply only says
 * ok (pause, unpause, shutdown).  Returns 0 or -errno with err naming the
 * worker: "worker NAME: REASON".
 */
int ctl_command(const char *rundir, const char *name, const char *cmd,
		int timeout_ms, struct bks_error *err);

/* The errno of an errno name ("ENOENT"), 0 if unknown. */
int ctl_errno_from_name(const char *name);

#endif /* BLKSTACK_CTL_CLIENT_H */
