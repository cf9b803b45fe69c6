/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * nbd:URI[,options] -- a sink on a remote NBD server, through libnbd's
 * asynchronous API, in the worker's loop (nbd-target.h has the syntax).
 *
 *   nbd:nbd://storage1:10809/vm1
 *   nbd:nbd+unix:///vm1?socket=/run/nbd/vm1.sock,retry=30
 *
 * One connection per layer.  Commands are issued with nbd_aio_*() and the
 * connection's descriptor is a watch of the loop, in the direction libnbd
 * asks for; completions run from libnbd's callbacks, which only record the
 * result (libnbd's lock is held there, so nothing may call into libnbd):
 * the requests are completed once the notify call has returned.
 *
 * What the layer offers is what the server said at the handshake: its
 * size, block sizes (the minimum, at least 512, is the layer's block
 * size; the maximum, at most 32 MiB, its max_io), read-only, and flush,
 * FUA, trim and write-zeroes each only if the server has them.  Block
 * status asks for "base:allocation" where the server has it.
 *
 * A read or write goes out as one command per buffer of the request when
 * every buffer is a whole number of blocks (the usual case: one buffer),
 * else through the layer's bounce buffer (one request at a time).
 *
 * Losing the server.  When the connection dies (the server exits, the
 * network drops), every command in flight is put back at the head of the
 * layer's queue, the handle is closed, and the layer reconnects with a
 * back-off (100 ms, doubling, at most 5 s; each attempt bounded by
 * connect-timeout).  Requests wait meanwhile: the guest sees latency, not
 * errors, for up to `retry` seconds from the loss (default 60); then the
 * waiting requests fail with EIO and new ones fail at once, until a
 * reconnection succeeds (attempts go on in the background).  A re-sent
 * read or write is idempotent.  A reconnection is accepted only to an
 * export of the same size that still offers what the layer declared.
 * Writes acknowledged on the old connection that no flush covered may
 * have been lost with the server: unless reconnect-flush=trust, the next
 * flush fails with EIO (once), so the guest learns it.
 *
 * Host names are resolved in the connect call (getaddrinfo), which can
 * block the loop on a slow resolver: prefer addresses, or names in
 * /etc/hosts, for storage servers.
 */
#include <errno.h>
#include <libnbd.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/mman.h>

#include "blkstack/driver-module.h"
#include "blkstack/driver.h"
#include "blkstack/nbd-target.h"
#include "blkstack/req-queue.h"

/* Commands of one request at most (else the bounce buffer). */
#define NBD_MAX_SEGS 16
/* Requests in flight at once; more wait in the queue. */
#define NBD_SLOTS 256
/* Largest read or write, whatever the server allows. */
#define NBD_MAX_IO (32u << 20)
/* Back-off between reconnection attempts. */
#define NBD_BACKOFF_MIN_NS (100ull * 1000 * 1000)
#define NBD_BACKOFF_MAX_NS (5ull * 1000 * 1000 * 1000)
#define NS_PER_S	   (1000ull * 1000 * 1000)

enum nbd_conn {
	NBD_DOWN,	/* no handle; the back-off timer will try again */
	NBD_CONNECTING, /* a reconnection attempt's handshake */
	NBD_READY,	/* connected, commands flow */
};

struct nbd_state;

/* A request in flight: its commands and their first error. */
struct nbd_slot {
	struct nbd_state *s;
	struct bks_req *req;   /* NULL: free */
	unsigned int pending;  /* commands not yet completed */
	int error;	       /* first positive errno of a command */
	bool lost;	       /* a command died with the connection */
	bool bounce;	       /* it holds the bounce buffer */
	uint64_t flush_mark;   /* flush: writes acknowledged when it left */
	struct nbd_slot *next; /* free list, or the done list */
};

struct nbd_state {
	struct bks_layer *self;
	struct bks_loop *loop;
	struct bks_nbd_target t;
	bool read_only; /* opened read-only (or the server is) */

	struct nbd_handle *h;
	enum nbd_conn conn;
	struct bks_watch watch;
	uint32_t watch_events;
	bool closing; /* inside nbd_close(): every callback is a loss */

	/* What the first connection offered, which a reconnection keeps. */
	uint64_t size;
	uint32_t block_size, max_io;
	bool can_flush, can_fua, can_trim, can_zero, has_extents;

	struct nbd_slot *slots, *free_slots, *done;
	unsigned int in_flight;
	/* Requests taken and not yet issued, FIFO through owner_next. */
	struct bks_req_queue wait;

	unsigned char *bounce;
	bool bounce_busy;

	/* Losing the connection. */
	struct bks_timer reconnect_timer; /* next attempt */
	struct bks_timer attempt_timer;	  /* connect-timeout of one */
	struct bks_timer retry_timer;	  /* the end of the retry window */
	uint64_t backoff_ns;
	uint64_t down_since_ns; /* 0: up */
	bool fail_fast;		/* the retry window passed */
	/* Writes acknowledged, and how many of them a flush covered. */
	uint64_t acked_writes, flushed_writes;
	bool durability_unknown; /* fail the next flush (reconnect-flush) */

	/* Counters (the stats op). */
	uint64_t reconnects, connect_failures, requeued, failed_while_down,
	    flush_failed_after_loss, bounced;
	char last_error[256];
};

static void conn_lost(struct nbd_state *s);
static void pump(struct nbd_state *s);

/* ---- small helpers ------------------------------------------------------- */

static void note_error(struct nbd_state *s, const char *what)
{
	const char *e = nbd_get_error();

	snprintf(s->last_error, sizeof(s->last_error), "%s: %s", what,
		 e ? e : "unknown error");
	bks_sanitize_line(s->last_error);
}

static void slot_put(struct nbd_state *s, struct nbd_slot *sl)
{
	if (sl->bounce)
		s->bounce_busy = false;
	sl->req = NULL;
	sl->bounce = false;
	sl->next = s->free_slots;
	s->free_slots = sl;
	s->in_flight--;
}

/* Is this errno the connection's, not the command's? */
static bool conn_errno(int e)
{
	return e == ENOTCONN || e == ESHUTDOWN || e == ECONNRESET ||
	       e == EPIPE || e == ECONNABORTED;
}

/* ---- the loop watch ------------------------------------------------------ */

/* Watch the handle's descriptor in the direction libnbd wants now. */
static void watch_update(struct nbd_state *s)
{
	unsigned dir;
	uint32_t ev = 0;

	if (!s->h || !s->watch.active)
		return;
	dir = nbd_aio_get_direction(s->h);
	if (dir & LIBNBD_AIO_DIRECTION_READ)
		ev |= EPOLLIN;
	if (dir & LIBNBD_AIO_DIRECTION_WRITE)
		ev |= EPOLLOUT;
	if (ev != s->watch_events && bks_watch_mod(&s->watch, ev) == 0)
		s->watch_events = ev;
}

/* Complete or requeue what the callbacks finished. */
static void reap(struct nbd_state *s)
{
	struct nbd_slot *sl;

	while ((sl = s->done)) {
		struct bks_req *req = sl->req;
		int e = sl->error;

		s->done = sl->next;
		if (sl->lost) {
			slot_put(s, sl);
			s->requeued++;
			bks_req_queue_push_front(&s->wait, req);
			continue;
		}
		if (!e && (req->op == BKS_OP_WRITE ||
			   req->op == BKS_OP_WRITE_ZEROES ||
			   req->op == BKS_OP_DISCARD))
			s->acked_writes++;
		if (!e && req->op == BKS_OP_FLUSH &&
		    sl->flush_mark > s->flushed_writes)
			s->flushed_writes = sl->flush_mark;
		if (!e && req->op == BKS_OP_BLOCK_STATUS && req->nextents == 0)
			e = EIO;
		slot_put(s, sl);
		bks_req_complete(req, e ? -e : 0);
	}
}

/*
 * After libnbd ran: reap, notice a dead connection, re-aim the watch.
 * noted: the notify failed and last_error already says why.
 */
static void after_notify(struct nbd_state *s, bool noted)
{
	reap(s);
	if (s->h && (nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h))) {
		if (!noted)
			note_error(s, "connection");
		conn_lost(s);
		return;
	}
	if (s->conn == NBD_CONNECTING && s->h && nbd_aio_is_ready(s->h)) {
		/* conn_ready() is reached through the watch callback. */
		return;
	}
	watch_update(s);
}

static void conn_ready(struct nbd_state *s);

static void on_fd(struct bks_watch *w, uint32_t events)
{
	struct nbd_state *s = w->opaque;
	int rc = 0;

	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
		rc = nbd_aio_notify_read(s->h);
	else if (events & EPOLLOUT)
		rc = nbd_aio_notify_write(s->h);
	if (rc < 0)
		note_error(s, "notify");
	after_notify(s, rc < 0);
	if (s->conn == NBD_CONNECTING && s->h && nbd_aio_is_ready(s->h))
		conn_ready(s);
	else if (s->conn == NBD_READY)
		pump(s);
}

/* ---- commands ------------------------------------------------------------ */

static int cmd_done(void *user_data, int *error)
{
	struct nbd_slot *sl = user_data;
	struct nbd_state *s = sl->s;

	if (*error) {
		if (s->closing || conn_errno(*error))
			sl->lost = true;
		else if (!sl->error)
			sl->error = *error;
	} else if (s->closing) {
		/* Retired by nbd_close() without an error: still a loss. */
		sl->lost = true;
	}
	if (--sl->pending == 0) {
		sl->next = s->done;
		s->done = sl;
	}
	return 1;
}

/* Fill the request's extents from the server's (length, flags) pairs. */
static int extents_cb(void *user_data, const char *metacontext, uint64_t offset,
		      uint32_t *entries, size_t nr_entries, int *error)
{
	struct nbd_slot *sl = user_data;
	struct bks_req *req = sl->req;
	uint64_t pos = offset, end = req->offset + req->len;

	(void)error;
	if (strcmp(metacontext, LIBNBD_CONTEXT_BASE_ALLOCATION) ||
	    offset != req->offset || req->nextents)
		return 0;
	for (size_t i = 0; i + 1 < nr_entries; i += 2) {
		struct bks_extent *x;
		uint64_t len = entries[i];

		if (req->nextents >= req->extents_max || pos >= end || !len)
			break;
		if (len > end - pos)
			len = end - pos;
		x = &req->extents[req->nextents++];
		x->offset = pos;
		x->length = len;
		x->flags = 0;
		if (entries[i + 1] & LIBNBD_STATE_HOLE)
			x->flags |= BKS_EXTENT_HOLE;
		if (entries[i + 1] & LIBNBD_STATE_ZERO)
			x->flags |= BKS_EXTENT_ZERO;
		x->depth = 1;
		pos += len;
	}
	return 0;
}

/* Does every buffer of req hold whole blocks (one command each)? */
static bool segs_direct(const struct nbd_state *s, const struct bks_req *req)
{
	if (req->iovcnt > NBD_MAX_SEGS)
		return false;
	for (int i = 0; i < req->iovcnt; i++)
		if (req->iov[i].iov_len % s->block_size)
			return false;
	return true;
}

static void bounce_in(struct nbd_state *s, const struct bks_req *req)
{
	unsigned char *p = s->bounce;

	for (int i = 0; i < req->iovcnt; i++) {
		memcpy(p, req->iov[i].iov_base, req->iov[i].iov_len);
		p += req->iov[i].iov_len;
	}
}

static void bounce_out(struct nbd_state *s, const struct bks_req *req)
{
	const unsigned char *p = s->bounce;

	for (int i = 0; i < req->iovcnt; i++) {
		memcpy(req->iov[i].iov_base, p, req->iov[i].iov_len);
		p += req->iov[i].iov_len;
	}
}

/* A bounced read: copy out once the command is done (a callback). */
static int bounced_read_done(void *user_data, int *error)
{
	struct nbd_slot *sl = user_data;

	if (!*error && !sl->s->closing)
		bounce_out(sl->s, sl->req);
	return cmd_done(user_data, error);
}

/*
 * Send one command for sl.  Returns 0 (sent, or failed for the request
 * alone: sl->error set), or -ENOTCONN when the connection is gone.
 */
static int send_one(struct nbd_state *s, struct nbd_slot *sl, void *buf,
		    uint64_t count, uint64_t offset, bool bounced_read)
{
	struct bks_req *req = sl->req;
	nbd_completion_callback cb = {
	    .callback = bounced_read ? bounced_read_done : cmd_done,
	    .user_data = sl};
	uint32_t flags = 0;
	int64_t r;

	if (req->flags & BKS_REQ_FUA)
		flags |= LIBNBD_CMD_FLAG_FUA;
	sl->pending++;
	switch (req->op) {
	case BKS_OP_READ:
		r = nbd_aio_pread(s->h, buf, count, offset, cb, 0);
		break;
	case BKS_OP_WRITE:
		r = nbd_aio_pwrite(s->h, buf, count, offset, cb, flags);
		break;
	case BKS_OP_FLUSH:
		r = nbd_aio_flush(s->h, cb, 0);
		break;
	case BKS_OP_DISCARD:
		r = nbd_aio_trim(s->h, count, offset, cb, 0);
		break;
	case BKS_OP_WRITE_ZEROES:
		if (req->flags & BKS_REQ_NO_HOLE)
			flags |= LIBNBD_CMD_FLAG_NO_HOLE;
		r = nbd_aio_zero(s->h, count, offset, cb, flags);
		break;
	case BKS_OP_BLOCK_STATUS:
	default: {
		nbd_extent_callback ecb = {.callback = extents_cb,
					   .user_data = sl};

		r = nbd_aio_block_status(s->h, count, offset, ecb, cb, 0);
		break;
	}
	}
	if (r >= 0)
		return 0;
	/* Not sent: libnbd calls no completion for it. */
	sl->pending--;
	if (nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h) ||
	    conn_errno(nbd_get_errno())) {
		note_error(s, bks_op_name(req->op));
		sl->lost = true;
		return -ENOTCONN;
	}
	note_error(s, bks_op_name(req->op));
	if (!sl->error)
		sl->error = nbd_get_errno() ? nbd_get_errno() : EIO;
	return 0;
}

/* Issue req in a free slot.  Returns 0, or -ENOTCONN (connection lost). */
static int issue(struct nbd_state *s, struct bks_req *req)
{
	struct nbd_slot *sl = s->free_slots;
	uint64_t off = req->offset;
	int rc = 0;

	s->free_slots = sl->next;
	s->in_flight++;
	sl->req = req;
	sl->pending = 0;
	sl->error = 0;
	sl->lost = false;
	sl->bounce = false;
	sl->flush_mark = s->acked_writes;
	/* One reference for the issuer, so no callback finishes sl early. */
	sl->pending++;

	if (req->op == BKS_OP_READ || req->op == BKS_OP_WRITE) {
		if (segs_direct(s, req)) {
			for (int i = 0; i < req->iovcnt && !rc && !sl->error;
			     i++) {
				rc = send_one(s, sl, req->iov[i].iov_base,
					      req->iov[i].iov_len, off, false);
				off += req->iov[i].iov_len;
			}
		} else {
			sl->bounce = true;
			s->bounce_busy = true;
			s->bounced++;
			if (req->op == BKS_OP_WRITE)
				bounce_in(s, req);
			rc = send_one(s, sl, s->bounce, req->len, off,
				      req->op == BKS_OP_READ);
		}
	} else {
		uint64_t count = req->len;

		/* Block status may answer less than asked (driver.h). */
		if (req->op == BKS_OP_BLOCK_STATUS) {
			req->nextents = 0;
			if (count > BKS_FILE_MAX_RANGE)
				count = BKS_FILE_MAX_RANGE;
		}
		rc = send_one(s, sl, NULL, count, off, false);
	}
	/* Drop the issuer's reference. */
	if (--sl->pending == 0) {
		sl->next = s->done;
		s->done = sl;
	}
	return rc;
}

/* Issue what waits, while the connection is up and slots are free. */
static void pump(struct nbd_state *s)
{
	while (s->conn == NBD_READY && s->wait.head && s->free_slots) {
		struct bks_req *req = s->wait.head;

		if ((req->op == BKS_OP_READ || req->op == BKS_OP_WRITE) &&
		    s->bounce_busy && !segs_direct(s, req))
			break; /* in order: wait for the bounce buffer */
		bks_req_queue_pop(&s->wait);
		if (req->op == BKS_OP_FLUSH && s->durability_unknown) {
			s->durability_unknown = false;
			s->flush_failed_after_loss++;
			bks_req_complete(req, -EIO);
			continue;
		}
		if (issue(s, req) < 0) {
			reap(s);
			conn_lost(s);
			return;
		}
	}
	after_notify(s, false);
}

static int take(struct nbd_state *s, struct bks_req *req)
{
	if (s->fail_fast) {
		s->failed_while_down++;
		return -EIO;
	}
	bks_req_queue_push(&s->wait, req);
	if (s->conn == NBD_READY)
		pump(s);
	return 0;
}

/* ---- connecting ---------------------------------------------------------- */

/* A new handle, configured, connecting.  Returns it or NULL (noted). */
static struct nbd_handle *conn_start(struct nbd_state *s)
{
	struct nbd_handle *h = nbd_create();
	int rc;

	if (!h) {
		note_error(s, "nbd_create");
		return NULL;
	}
	if (nbd_set_export_name(h, s->t.export) < 0 ||
	    nbd_add_meta_context(h, LIBNBD_CONTEXT_BASE_ALLOCATION) < 0 ||
	    (s->t.tls && nbd_set_tls(h, LIBNBD_TLS_REQUIRE) < 0) ||
	    (s->t.tls && s->t.tls_certificates[0] &&
	     nbd_set_tls_certificates(h, s->t.tls_certificates) < 0)) {
		note_error(s, "configure");
		nbd_close(h);
		return NULL;
	}
	if (s->t.transport == BKS_NBD_UNIX)
		rc = nbd_aio_connect_unix(h, s->t.socket);
	else
		rc = nbd_aio_connect_tcp(h, s->t.host, s->t.port);
	if (rc < 0) {
		note_error(s, "connect");
		nbd_close(h);
		return NULL;
	}
	return h;
}

/*
 * Does the connected handle h offer what the layer was opened with?
 * Returns NULL, or why not.
 */
static const char *conn_mismatch(const struct nbd_state *s,
				 struct nbd_handle *h)
{
	if (nbd_get_size(h) != (int64_t)s->size)
		return "the export's size changed";
	if (!s->read_only && nbd_is_read_only(h) == 1)
		return "the export became read-only";
	if ((s->can_flush && nbd_can_flush(h) != 1) ||
	    (s->can_fua && nbd_can_fua(h) != 1) ||
	    (s->can_trim && nbd_can_trim(h) != 1) ||
	    (s->can_zero && nbd_can_zero(h) != 1))
		return "the export no longer offers flush, FUA, trim or "
		       "write zeroes as before";
	return NULL;
}

static void on_reconnect_timer(struct bks_timer *t);

/* Schedule the next reconnection attempt. */
static void conn_schedule(struct nbd_state *s)
{
	s->conn = NBD_DOWN;
	if (!s->backoff_ns)
		s->backoff_ns = NBD_BACKOFF_MIN_NS;
	bks_timer_arm(&s->reconnect_timer, s->backoff_ns);
	s->backoff_ns *= 2;
	if (s->backoff_ns > NBD_BACKOFF_MAX_NS)
		s->backoff_ns = NBD_BACKOFF_MAX_NS;
}

/* Drop the handle: every command still in it is lost (requeued). */
static void conn_drop(struct nbd_state *s)
{
	if (!s->h)
		return;
	bks_watch_del(&s->watch);
	s->watch_events = 0;
	bks_timer_cancel(&s->attempt_timer);
	s->closing = true;
	nbd_close(s->h);
	s->closing = false;
	s->h = NULL;
	/* Whatever libnbd retired without a callback is lost too. */
	for (unsigned int i = 0; i < NBD_SLOTS; i++) {
		struct nbd_slot *sl = &s->slots[i];

		if (sl->req && sl->pending) {
			sl->pending = 0;
			sl->lost = true;
			sl->next = s->done;
			s->done = sl;
		}
	}
	reap(s);
}

static void conn_lost(struct nbd_state *s)
{
	bool was_ready = s->conn == NBD_READY;

	/* Down first: what the reap below completes may submit again. */
	s->conn = NBD_DOWN;
	conn_drop(s);
	if (was_ready) {
		if (s->acked_writes > s->flushed_writes &&
		    !s->t.trust_reconnect_flush)
			s->durability_unknown = true;
		if (!s->down_since_ns) {
			s->down_since_ns = bks_now_ns();
			if (s->t.retry_s)
				bks_timer_arm(&s->retry_timer,
					      s->t.retry_s * NS_PER_S);
		}
		if (!s->t.retry_s)
			bks_timer_arm(&s->retry_timer, 0);
	} else {
		s->connect_failures++;
	}
	conn_schedule(s);
}

static void conn_ready(struct nbd_state *s)
{
	const char *why = conn_mismatch(s, s->h);

	bks_timer_cancel(&s->attempt_timer);
	if (why) {
		snprintf(s->last_error, sizeof(s->last_error),
			 "reconnected, refused: %s", why);
		conn_lost(s);
		return;
	}
	s->conn = NBD_READY;
	s->reconnects++;
	s->backoff_ns = 0;
	s->down_since_ns = 0;
	s->fail_fast = false;
	bks_timer_cancel(&s->retry_timer);
	/* Acknowledged writes before the loss are in durability_unknown. */
	s->flushed_writes = s->acked_writes;
	watch_update(s);
	pump(s);
}

static void on_reconnect_timer(struct bks_timer *t)
{
	struct nbd_state *s = t->opaque;
	int rc;

	s->h = conn_start(s);
	if (!s->h) {
		s->connect_failures++;
		conn_schedule(s);
		return;
	}
	s->conn = NBD_CONNECTING;
	rc = bks_watch_add(s->loop, &s->watch, nbd_aio_get_fd(s->h),
			   EPOLLIN | EPOLLOUT, on_fd, s);
	if (rc < 0) {
		snprintf(s->last_error, sizeof(s->last_error),
			 "watching the connection: %s", strerror(-rc));
		conn_lost(s);
		return;
	}
	s->watch_events = EPOLLIN | EPOLLOUT;
	bks_timer_arm(&s->attempt_timer, s->t.connect_timeout_s * NS_PER_S);
	watch_update(s);
}

static void on_attempt_timer(struct bks_timer *t)
{
	struct nbd_state *s = t->opaque;

	snprintf(s->last_error, sizeof(s->last_error),
		 "connecting: no answer in %u s (connect-timeout)",
		 s->t.connect_timeout_s);
	conn_lost(s);
}

/* The retry window has passed: fail what waits, and what comes. */
static void on_retry_timer(struct bks_timer *t)
{
	struct nbd_state *s = t->opaque;
	struct bks_req *req;

	if (s->conn == NBD_READY)
		return;
	s->fail_fast = true;
	while ((req = bks_req_queue_pop(&s->wait))) {
		s->failed_while_down++;
		bks_req_complete(req, -EIO);
	}
}

/*
 * The first connection, at open: the handshake under a poll() of our
 * own, bounded by connect-timeout (open may block; the loop is not
 * running this layer yet).
 */
static int connect_first(struct nbd_state *s, struct bks_error *err)
{
	uint64_t deadline = bks_now_ns() + s->t.connect_timeout_s * NS_PER_S;
	bool noted = false;

	s->h = conn_start(s);
	if (!s->h)
		return bks_error_setmsg(err, ECONNREFUSED,
					"connecting to %s: %s", s->t.uri,
					s->last_error);
	while (!nbd_aio_is_ready(s->h)) {
		struct pollfd p = {.fd = -1};
		unsigned dir;
		uint64_t now = bks_now_ns();
		int n;

		/*
		 * Dead: the reason is what the failed notify said (a TLS
		 * verification, a refused export); asked now, libnbd would
		 * only say the handle is not connected.
		 */
		if (nbd_aio_is_dead(s->h) || nbd_aio_is_closed(s->h) ||
		    (p.fd = nbd_aio_get_fd(s->h)) < 0) {
			if (!noted)
				note_error(s, "handshake");
			return bks_error_setmsg(err, ECONNREFUSED,
						"connecting to %s: %s",
						s->t.uri, s->last_error);
		}
		if (now >= deadline)
			return bks_error_setmsg(err, ETIMEDOUT,
						"connecting to %s: no answer "
						"in %u s (connect-timeout)",
						s->t.uri,
						s->t.connect_timeout_s);
		dir = nbd_aio_get_direction(s->h);
		if (dir & LIBNBD_AIO_DIRECTION_READ)
			p.events |= POLLIN;
		if (dir & LIBNBD_AIO_DIRECTION_WRITE)
			p.events |= POLLOUT;
		n = poll(&p, 1, (int)((deadline - now) / 1000000 + 1));
		if (n < 0 && errno != EINTR)
			return bks_error_set(
			    err, errno, "connecting to %s: poll", s->t.uri);
		if (n <= 0)
			continue;
		if (p.revents & (POLLIN | POLLHUP | POLLERR))
			n = nbd_aio_notify_read(s->h);
		else
			n = nbd_aio_notify_write(s->h);
		if (n < 0 && !noted) {
			note_error(s, "handshake");
			noted = true;
		}
	}
	return 0;
}

/* What the server offers, checked and kept. */
static int take_geometry(struct nbd_state *s, struct bks_error *err)
{
	int64_t size = nbd_get_size(s->h);
	int64_t min = nbd_get_block_size(s->h, LIBNBD_SIZE_MINIMUM);
	int64_t max = nbd_get_block_size(s->h, LIBNBD_SIZE_MAXIMUM);
	uint32_t bs = 512;

	if (size < 0)
		return bks_error_setmsg(err, EIO, "%s: no export size: %s",
					s->t.uri, nbd_get_error());
	if (min > 0) {
		if (min > 65536 || (min & (min - 1)))
			return bks_error_setmsg(
			    err, EINVAL,
			    "%s: the server's minimum block "
			    "size %lld is not a power of two "
			    "up to 64K",
			    s->t.uri, (long long)min);
		if ((uint32_t)min > bs)
			bs = (uint32_t)min;
	}
	if (size == 0 || size % bs)
		return bks_error_setmsg(
		    err, EINVAL,
		    "%s: the export's size %lld is not a "
		    "positive multiple of its block size %u",
		    s->t.uri, (long long)size, bs);
	s->size = (uint64_t)size;
	s->block_size = bs;
	s->max_io = NBD_MAX_IO;
	if (max > 0 && (uint64_t)max < s->max_io)
		s->max_io = (uint32_t)max;
	s->max_io -= s->max_io % bs;
	if (s->max_io < bs)
		return bks_error_setmsg(err, EINVAL,
					"%s: the server's maximum block size "
					"%lld is below its block size %u",
					s->t.uri, (long long)max, bs);
	if (nbd_is_read_only(s->h) == 1)
		s->read_only = true;
	s->can_flush = nbd_can_flush(s->h) == 1;
	s->can_fua = nbd_can_fua(s->h) == 1;
	s->can_trim = nbd_can_trim(s->h) == 1;
	s->can_zero = nbd_can_zero(s->h) == 1;
	s->has_extents =
	    nbd_can_meta_context(s->h, LIBNBD_CONTEXT_BASE_ALLOCATION) == 1;
	return 0;
}

/* ---- the driver ops ------------------------------------------------------ */

static void sink_close(void *state, struct bks_layer *self);

static int sink_open(void *state, struct bks_layer *self,
		     const struct bks_open_args *args, struct bks_error *err)
{
	struct nbd_state *s = state;
	int rc;

	s->self = self;
	s->loop = args->loop;
	s->read_only = args->read_only;
	bks_timer_init(s->loop, &s->reconnect_timer, on_reconnect_timer, s);
	bks_timer_init(s->loop, &s->attempt_timer, on_attempt_timer, s);
	bks_timer_init(s->loop, &s->retry_timer, on_retry_timer, s);
	rc = bks_nbd_target_parse(args->args, &s->t, err);
	if (rc < 0)
		goto out;
	if (s->t.tls) {
		struct nbd_handle *h = nbd_create();
		bool tls = h && nbd_supports_tls(h) == 1;

		if (h)
			nbd_close(h);
		if (!tls) {
			rc = bks_error_setmsg(err, ENOTSUP,
					      "%s: this libnbd was built "
					      "without TLS",
					      s->t.uri);
			goto out;
		}
	}
	s->slots = calloc(NBD_SLOTS, sizeof(*s->slots));
	if (!s->slots) {
		rc = bks_error_set(err, ENOMEM, "%s: request slots", s->t.uri);
		goto out;
	}
	for (unsigned int i = NBD_SLOTS; i-- > 0;) {
		s->slots[i].s = s;
		s->slots[i].next = s->free_slots;
		s->free_slots = &s->slots[i];
	}
	rc = connect_first(s, err);
	if (rc < 0)
		goto out;
	rc = take_geometry(s, err);
	if (rc < 0)
		goto out;
	s->bounce = mmap(NULL, s->max_io, PROT_READ | PROT_WRITE,
			 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (s->bounce == MAP_FAILED) {
		s->bounce = NULL;
		rc = bks_error_set(err, errno, "%s: bounce buffer of %u bytes",
				   s->t.uri, s->max_io);
		goto out;
	}
	rc = bks_watch_add(s->loop, &s->watch, nbd_aio_get_fd(s->h), EPOLLIN,
			   on_fd, s);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "%s: watching the connection",
				   s->t.uri);
		goto out;
	}
	s->watch_events = EPOLLIN;
	s->conn = NBD_READY;
	watch_update(s);
	rc = 0;
out:
	if (rc < 0)
		sink_close(s, self);
	return rc;
}

static void sink_close(void *state, struct bks_layer *self)
{
	struct nbd_state *s = state;

	(void)self;
	bks_timer_cancel(&s->reconnect_timer);
	bks_timer_cancel(&s->attempt_timer);
	bks_timer_cancel(&s->retry_timer);
	if (s->h) {
		bks_watch_del(&s->watch);
		if (s->conn == NBD_READY)
			nbd_shutdown(s->h, 0);
		nbd_close(s->h);
		s->h = NULL;
	}
	if (s->bounce)
		munmap(s->bounce, s->max_io);
	s->bounce = NULL;
	free(s->slots);
	s->slots = NULL;
}

static int sink_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct nbd_state *s = state;

	(void)self;
	info->size = s->size;
	info->block_size = s->block_size;
	info->max_io = s->max_io;
	info->max_discard = BKS_FILE_MAX_RANGE;
	info->max_write_zeroes = BKS_FILE_MAX_RANGE;
	info->read_only = s->read_only;
	info->ops = BKS_OPF(BKS_OP_READ);
	if (!s->read_only) {
		info->ops |= BKS_OPF(BKS_OP_WRITE);
		if (s->can_trim)
			info->ops |= BKS_OPF(BKS_OP_DISCARD);
		if (s->can_zero)
			info->ops |= BKS_OPF(BKS_OP_WRITE_ZEROES);
		info->can_fua = s->can_fua;
		info->zero_no_hole = s->can_zero;
	}
	if (s->can_flush)
		info->ops |= BKS_OPF(BKS_OP_FLUSH);
	return 0;
}

static int sink_req(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)self;
	return take(state, req);
}

static int sink_block_status(void *state, struct bks_layer *self,
			     struct bks_req *req)
{
	struct nbd_state *s = state;

	(void)self;
	if (!s->has_extents)
		return -EOPNOTSUPP;
	return take(s, req);
}

static const char *conn_name(enum nbd_conn c)
{
	switch (c) {
	case NBD_READY:
		return "ready";
	case NBD_CONNECTING:
		return "connecting";
	default:
		return "down";
	}
}

static void sink_stats(void *state, struct bks_layer *self,
		       struct bks_stats_out *out)
{
	struct nbd_state *s = state;

	(void)self;
	bks_stats_str(out, "uri", s->t.uri);
	bks_stats_str(out, "connection",
		      s->fail_fast ? "failed" : conn_name(s->conn));
	bks_stats_u64(out, "in_flight", s->in_flight);
	bks_stats_u64(out, "waiting", bks_req_queue_len(&s->wait));
	bks_stats_u64(out, "reconnects", s->reconnects);
	bks_stats_u64(out, "connect_failures", s->connect_failures);
	bks_stats_u64(out, "requeued", s->requeued);
	bks_stats_u64(out, "failed_while_down", s->failed_while_down);
	bks_stats_u64(out, "flush_failed_after_loss",
		      s->flush_failed_after_loss);
	bks_stats_u64(out, "bounced", s->bounced);
	bks_stats_u64(
	    out, "down_ms",
	    s->down_since_ns ? (bks_now_ns() - s->down_since_ns) / 1000000 : 0);
	bks_stats_str(out, "last_error", s->last_error);
}

static const struct bks_driver bks_driver_nbd = {
    .desc = BKS_NBD_DESC,
    .state_size = sizeof(struct nbd_state),
    .open = sink_open,
    .close = sink_close,
    .info = sink_info,
    .read = sink_req,
    .write = sink_req,
    .flush = sink_req,
    .discard = sink_req,
    .write_zeroes = sink_req,
    .block_status = sink_block_status,
    .stats = sink_stats,
};

/* A module (driver-module.h): what the loader looks up. */
const struct bks_module bks_module_nbd = {
    .abi = BKS_MODULE_ABI,
    .driver_size = sizeof(struct bks_driver),
    .driver = &bks_driver_nbd,
};
