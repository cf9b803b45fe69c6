/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-fuse's NBD client: one connection to a worker's nbd.sock that
 * outlives the worker.  Fixed newstyle, NBD_OPT_GO on the default export,
 * simple replies, many requests in flight matched by cookie; every socket
 * operation is non-blocking and driven by the caller's bks_loop.
 *
 * Reconnection: when the connection fails (EOF, a socket error, a reply
 * that breaks the protocol, NBD_ESHUTDOWN from a worker that is going
 * away), every unanswered request is kept.  The client connects again to
 * the same path at once, then every 20 ms for a second, then 100 ms
 * doubling to 1 s, redoes the
 * handshake, checks that the export's size and read-only flag are the
 * ones of the first connection (else it is another disk: every request
 * fails with EIO, then and from then on), and re-sends every unanswered
 * request in the order they were first sent (block writes are
 * idempotent).  Requests submitted meanwhile are queued behind them.
 *
 * Bounded waits: a request held while there is no connection fails with
 * EIO once it has been held reconnect_timeout seconds (since the outage
 * began, or since it arrived if later).  If DIR/supervisor.state (DIR is
 * the socket's directory) says state=gave-up, the worker will not come
 * back: held requests fail at once, and so do new ones until a
 * connection is made again.  While connected, replies are the worker's
 * business: a hung worker is detected and replaced by its supervisor,
 * which ends the connection.
 */
#ifndef BLKSTACK_FUSE_NBD_H
#define BLKSTACK_FUSE_NBD_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/error.h"
#include "blkstack/loop.h"
#include "fuse-log.h"

struct bf_nbd;
struct bf_req;

/* Called once per submitted request with 0 or -errno. */
typedef void bf_req_done_fn(struct bf_req *req, int rc);

/*
 * One NBD request, owned by the caller (embedded in its own state) and
 * valid until its done callback has run.  The caller fills the fields
 * above "private" and calls bf_nbd_submit().
 */
struct bf_req {
	uint16_t cmd;	/* NBD_CMD_READ, _WRITE, _FLUSH, _WRITE_ZEROES */
	uint16_t flags; /* NBD_CMD_FLAG_* */
	uint64_t off;
	uint32_t len;
	char *buf; /* READ: len bytes to fill; WRITE: len bytes to send */
	bf_req_done_fn *done;
	void *opaque;
	/* private */
	struct bf_req *prev, *next;
	int queue; /* which list of the client holds it */
	uint64_t cookie;
	uint64_t held_ns; /* held since (outage or arrival), CLOCK_MONOTONIC */
	uint32_t sent;	  /* bytes of header + payload sent on this conn */
	unsigned char hdr[28];
};

struct bf_nbd_export {
	uint64_t size;
	uint16_t flags; /* NBD_FLAG_* of the transmission phase */
};

/*
 * A client of the NBD socket at path, on loop, logging to log.
 * reconnect_timeout_s bounds how long a request waits for a connection
 * (0: it fails as soon as the connection is lost).  Does not connect.
 * Returns 0 or -errno with err set.
 */
int bf_nbd_new(struct bf_nbd **out, struct bks_loop *loop, const char *path,
	       unsigned int reconnect_timeout_s, struct bf_log *log,
	       struct bks_error *err);

/*
 * The first connection: connect and handshake, running loop until done or
 * timeout_ms passed.  Called once, by main, before the mount.  Fills ex.
 * Returns 0 or -errno with err set (no retry: at start-up the worker is
 * there, or the starter wants to know now).
 */
int bf_nbd_connect(struct bf_nbd *c, int timeout_ms, struct bf_nbd_export *ex,
		   struct bks_error *err);

/*
 * Queue req (fields above "private" filled).  Its done callback runs
 * later from the loop, or at once with -EIO if the client has failed for
 * good (another disk behind the socket) or the supervisor gave up.
 */
void bf_nbd_submit(struct bf_nbd *c, struct bf_req *req);

/* Requests submitted and not yet done. */
unsigned int bf_nbd_in_flight(const struct bf_nbd *c);

/*
 * Fail every unanswered request with rc (their done callbacks run now),
 * for the program's exit.  The client stays usable.
 */
void bf_nbd_fail_all(struct bf_nbd *c, int rc);

/*
 * Hurry (ms > 0): from now on no request waits more than ms for the
 * worker: held requests fail with EIO once held that long (sooner than
 * reconnect_timeout_s), and while connected, if the oldest unanswered
 * request is older than that, the connection is dropped and every
 * request fails with EIO (checked each second).  For a detach that must
 * not hang on a dead or hung worker (SIGUSR1, from the hotplug helper).
 * ms = 0 ends it (a new user opened the file).
 */
void bf_nbd_hurry(struct bf_nbd *c, unsigned int ms);

/* Close the connection and free the client (NULL: nothing); every
 * request must be done (bf_nbd_fail_all). */
void bf_nbd_free(struct bf_nbd *c);

#endif /* BLKSTACK_FUSE_NBD_H */
