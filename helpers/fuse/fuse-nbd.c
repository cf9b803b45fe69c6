/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-fuse's NBD client (fuse-nbd.h).
 *
 * States: DOWN (no socket; the retry timer will connect), HANDSHAKE
 * (connected, greeting and option replies being read), UP (transmission),
 * BROKEN (another disk answered: everything fails).  Requests live on one
 * of two lists: sendq (not yet wholly sent on this connection) and waitq
 * (sent, waiting for the reply).  A lost connection puts waitq back in
 * front of sendq, so that a reconnect re-sends everything in the order it
 * was first sent.  Cookies index a slot table (with a generation in the
 * high half), so that a reply is found without trusting the server.
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "blkstack/nbd-proto.h"
#include "blkstack/sock.h"
#include "conf.h"
#include "fuse-nbd.h"

enum {
	C_DOWN,
	C_HANDSHAKE,
	C_UP,
	C_BROKEN
};
enum {
	Q_NONE,
	Q_SEND,
	Q_WAIT
};

/*
 * Reconnect back-off: at once, then every 20 ms for the first second of
 * an outage (a supervised worker is back within about 100 ms, and an
 * attempt on a dead socket is one refused connect), then 100 ms doubling
 * up to 1 s.
 */
#define RETRY_FAST_MS	  20u
#define RETRY_FAST_FOR_MS 1000u
#define RETRY_FIRST_MS	  100u
#define RETRY_MAX_MS	  1000u
/* How long a handshake may take before the attempt counts as failed. */
#define HANDSHAKE_MS 5000u
/* The server's greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
#define GREETING_SIZE 18u
/* Longest option reply payload accepted (error strings are <= 4096). */
#define OPT_REPLY_MAX 8192u
/* Receive staging buffer (reply headers; the start of read payloads). */
#define IN_SIZE 65536u
/* Requests sent per sendmsg. */
#define SEND_BATCH 32

struct list {
	struct bf_req *head, *tail;
	unsigned int n;
};

struct bf_nbd {
	struct bks_loop *loop;
	struct bf_log *log;
	char path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	char state_file[PATH_MAX];
	unsigned int timeout_s;
	unsigned int hurry_ms;	  /* bf_nbd_hurry(): 0 if not hurried */
	struct bks_timer hurry_t; /* hurried: the connected stall check */
	int state;
	int fd;
	struct bks_watch w;
	bool watching;
	uint32_t events;
	struct bks_timer retry_t; /* DOWN: next attempt; HANDSHAKE: deadline */
	struct bks_timer hold_t;  /* DOWN: the next held request's deadline */
	struct bks_defer flush_d; /* UP: send what was queued in this batch */
	unsigned int backoff_ms;
	/* the handshake */
	unsigned char *hs;
	size_t hs_got, hs_need;
	int hs_phase; /* 0 greeting, 1 reply header, 2 reply payload */
	uint32_t hs_type;
	bool hs_export;
	struct bf_nbd_export ex, first;
	bool have_first;
	const char *hs_fail; /* why the handshake failed, for the log */
	/* transmission input */
	unsigned char *in;
	size_t in_start, in_end;
	struct bf_req *rx; /* read whose payload is being received */
	uint32_t rx_got;
	/* requests */
	struct list sendq, waitq;
	struct bf_req **slots;
	uint32_t *gens;
	uint32_t nslots, *free_slots, nfree;
	unsigned int in_flight;
	/* the outage */
	uint64_t outage_ns; /* 0: connected (or never lost) */
	unsigned int attempts;
	bool gave_up;
	bool connecting_first;
	int first_rc;
};

/* ---- lists and slots ----------------------------------------------------- */

static void list_add_tail(struct list *l, struct bf_req *r, int q)
{
	r->next = NULL;
	r->prev = l->tail;
	if (l->tail)
		l->tail->next = r;
	else
		l->head = r;
	l->tail = r;
	l->n++;
	r->queue = q;
}

static void list_del(struct list *l, struct bf_req *r)
{
	if (r->prev)
		r->prev->next = r->next;
	else
		l->head = r->next;
	if (r->next)
		r->next->prev = r->prev;
	else
		l->tail = r->prev;
	r->prev = r->next = NULL;
	l->n--;
	r->queue = Q_NONE;
}

static struct list *req_list(struct bf_nbd *c, struct bf_req *r)
{
	return r->queue == Q_SEND   ? &c->sendq
	       : r->queue == Q_WAIT ? &c->waitq
				    : NULL;
}

/* A slot for r; sets r->cookie.  Returns 0 or -ENOMEM. */
static int slot_get(struct bf_nbd *c, struct bf_req *r)
{
	uint32_t i;

	if (!c->nfree) {
		uint32_t n = c->nslots ? c->nslots * 2 : 64;
		struct bf_req **s = realloc(c->slots, n * sizeof(*s));
		uint32_t *g, *f;

		if (!s)
			return -ENOMEM;
		c->slots = s;
		g = realloc(c->gens, n * sizeof(*g));
		if (!g)
			return -ENOMEM;
		c->gens = g;
		f = realloc(c->free_slots, n * sizeof(*f));
		if (!f)
			return -ENOMEM;
		c->free_slots = f;
		for (i = c->nslots; i < n; i++) {
			c->slots[i] = NULL;
			c->gens[i] = 0;
		}
		/* Lowest index popped first. */
		for (i = n; i > c->nslots; i--)
			c->free_slots[c->nfree++] = i - 1;
		c->nslots = n;
	}
	i = c->free_slots[--c->nfree];
	c->slots[i] = r;
	c->gens[i]++;
	r->cookie = (uint64_t)c->gens[i] << 32 | i;
	return 0;
}

static struct bf_req *slot_find(struct bf_nbd *c, uint64_t cookie)
{
	uint32_t i = (uint32_t)cookie;

	if (i >= c->nslots || !c->slots[i] || c->slots[i]->cookie != cookie)
		return NULL;
	return c->slots[i];
}

static void slot_put(struct bf_nbd *c, struct bf_req *r)
{
	uint32_t i = (uint32_t)r->cookie;

	c->slots[i] = NULL;
	c->free_slots[c->nfree++] = i;
}

/* Finish r with rc: off its list, out of its slot, then its callback. */
static void req_finish(struct bf_nbd *c, struct bf_req *r, int rc)
{
	struct list *l = req_list(c, r);

	if (l)
		list_del(l, r);
	if (c->rx == r)
		c->rx = NULL;
	slot_put(c, r);
	c->in_flight--;
	r->done(r, rc);
}

static void fail_list(struct bf_nbd *c, struct list *l, int rc)
{
	while (l->head)
		req_finish(c, l->head, rc);
}

void bf_nbd_fail_all(struct bf_nbd *c, int rc)
{
	fail_list(c, &c->waitq, rc);
	fail_list(c, &c->sendq, rc);
}

unsigned int bf_nbd_in_flight(const struct bf_nbd *c)
{
	return c->in_flight;
}

/* ---- the socket ---------------------------------------------------------- */

static void set_events(struct bf_nbd *c, uint32_t ev)
{
	if (c->watching && c->events != ev && bks_watch_mod(&c->w, ev) == 0)
		c->events = ev;
}

static void sock_close(struct bf_nbd *c)
{
	if (c->watching)
		bks_watch_del(&c->w);
	c->watching = false;
	if (c->fd >= 0)
		close(c->fd);
	c->fd = -1;
}

static uint64_t ms_since(uint64_t ns)
{
	return (bks_now_ns() - ns) / 1000000u;
}

/* Has the supervisor given up on the worker (DIR/supervisor.state)? */
static bool supervisor_gave_up(struct bf_nbd *c)
{
	char *text = NULL;
	bool gave_up = false;

	if (!c->state_file[0] ||
	    conf_read_file(c->state_file, &text, 65536, NULL) < 0)
		return false;
	for (char *line = text; line && *line;) {
		char *nl = strchr(line, '\n');

		if (nl)
			*nl = '\0';
		if (strcmp(line, "state=gave-up") == 0)
			gave_up = true;
		line = nl ? nl + 1 : NULL;
	}
	free(text);
	return gave_up;
}

/* Fail held requests whose wait is over; re-arm for the next one. */
static void hold_check(struct bf_nbd *c)
{
	uint64_t now = bks_now_ns(), lim = (uint64_t)c->timeout_s * 1000000000u,
		 next = 0;

	if (c->hurry_ms && (uint64_t)c->hurry_ms * 1000000u < lim)
		lim = (uint64_t)c->hurry_ms * 1000000u;
	unsigned int failed = 0;
	struct bf_req *r, *n;

	if (c->state == C_UP || c->state == C_BROKEN)
		return;
	for (r = c->sendq.head; r; r = n) {
		n = r->next;
		if (c->gave_up || now - r->held_ns >= lim) {
			req_finish(c, r, -EIO);
			failed++;
		} else if (!next || r->held_ns + lim < next) {
			next = r->held_ns + lim;
		}
	}
	if (failed)
		bf_log(c->log, LOG_ERR,
		       "%u requests failed with EIO: no connection to %s for "
		       "%s",
		       failed, c->path,
		       c->gave_up ? "good (the supervisor gave up)"
				  : "the reconnect timeout");
	if (next)
		bks_timer_arm(&c->hold_t, next - now);
	else
		bks_timer_cancel(&c->hold_t);
}

static void on_hold(struct bks_timer *t)
{
	hold_check(t->opaque);
}

/* The connection is lost (or an attempt failed): hold everything. */
static void conn_lost(struct bf_nbd *c, const char *why, int code)
{
	struct bf_req *r;
	uint64_t now = bks_now_ns();
	bool was_up = c->state == C_UP;

	sock_close(c);
	bks_defer_cancel(&c->flush_d);
	c->rx = NULL;
	c->in_start = c->in_end = 0;
	if (c->connecting_first) {
		c->state = C_DOWN;
		c->hs_fail = why;
		c->first_rc = code ? -code : -EIO;
		return;
	}
	/* waitq goes back in front of sendq, in the order it was sent. */
	while (c->waitq.tail) {
		r = c->waitq.tail;
		list_del(&c->waitq, r);
		r->next = c->sendq.head;
		r->prev = NULL;
		if (c->sendq.head)
			c->sendq.head->prev = r;
		else
			c->sendq.tail = r;
		c->sendq.head = r;
		c->sendq.n++;
		r->queue = Q_SEND;
	}
	for (r = c->sendq.head; r; r = r->next) {
		r->sent = 0;
		if (r->held_ns < now && was_up)
			r->held_ns = now;
	}
	c->state = C_DOWN;
	if (was_up) {
		c->outage_ns = now;
		c->attempts = 0;
		bf_log(c->log, LOG_WARNING,
		       "lost the connection to %s (%s%s%s); %u requests "
		       "held, reconnecting",
		       c->path, why, code ? ": " : "",
		       code ? strerror(code) : "", c->sendq.n);
		/* First attempt at once. */
		c->backoff_ms = 0;
	} else if (c->attempts == 1 || c->attempts % 20 == 0) {
		bf_log(c->log, LOG_INFO,
		       "reconnect to %s: attempt %u failed (%s%s%s)", c->path,
		       c->attempts, why, code ? ": " : "",
		       code ? strerror(code) : "");
	}
	bks_timer_arm(&c->retry_t, (uint64_t)c->backoff_ms * 1000000u);
	if (ms_since(c->outage_ns) < RETRY_FAST_FOR_MS)
		c->backoff_ms = RETRY_FAST_MS;
	else if (c->backoff_ms < RETRY_FIRST_MS)
		c->backoff_ms = RETRY_FIRST_MS;
	else
		c->backoff_ms *= 2;
	if (c->backoff_ms > RETRY_MAX_MS)
		c->backoff_ms = RETRY_MAX_MS;
	hold_check(c);
}

/* Another disk answered: fail everything, now and from now on. */
static void conn_broken(struct bf_nbd *c)
{
	sock_close(c);
	bks_timer_cancel(&c->retry_t);
	bks_timer_cancel(&c->hold_t);
	bks_defer_cancel(&c->flush_d);
	c->state = C_BROKEN;
	bf_log(c->log, LOG_ERR,
	       "%s now serves another export (size %llu, was %llu; flags "
	       "0x%x, were 0x%x): every request fails with EIO from now on",
	       c->path, (unsigned long long)c->ex.size,
	       (unsigned long long)c->first.size, c->ex.flags, c->first.flags);
	bf_nbd_fail_all(c, -EIO);
}

/* ---- transmission ------------------------------------------------------- */

/* Send what sendq holds, as far as the socket takes it. */
static void send_some(struct bf_nbd *c)
{
	while (c->state == C_UP && c->sendq.head) {
		struct iovec iov[2 * SEND_BATCH];
		struct msghdr msg = {.msg_iov = iov};
		struct bf_req *r;
		size_t n = 0;
		ssize_t got;

		for (r = c->sendq.head; r && n + 2 <= 2 * SEND_BATCH;
		     r = r->next) {
			uint32_t pay = r->cmd == NBD_CMD_WRITE ? r->len : 0;
			uint32_t s = r->sent;

			if (s < sizeof(r->hdr)) {
				iov[n].iov_base = r->hdr + s;
				iov[n++].iov_len = sizeof(r->hdr) - s;
				s = 0;
			} else {
				s -= sizeof(r->hdr);
			}
			if (pay > s) {
				iov[n].iov_base = r->buf + s;
				iov[n++].iov_len = pay - s;
			}
		}
		msg.msg_iovlen = n;
		got = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (got < 0) {
			if (errno == EINTR)
				continue;
			if (errno == EAGAIN) {
				set_events(c, EPOLLIN | EPOLLOUT);
				return;
			}
			conn_lost(c, "send", errno);
			return;
		}
		while (got > 0 && (r = c->sendq.head)) {
			uint32_t total = (uint32_t)sizeof(r->hdr) +
					 (r->cmd == NBD_CMD_WRITE ? r->len : 0);
			uint32_t left = total - r->sent;

			if ((size_t)got < left) {
				r->sent += (uint32_t)got;
				got = 0;
				break;
			}
			got -= left;
			r->sent = total;
			list_del(&c->sendq, r);
			list_add_tail(&c->waitq, r, Q_WAIT);
		}
	}
	set_events(c, EPOLLIN);
}

static void on_flush(struct bks_defer *d)
{
	send_some(d->opaque);
}

/*
 * Parse what c->in holds.  Returns 1 to go on reading, 0 if the
 * connection was lost.
 */
static int parse_replies(struct bf_nbd *c)
{
	for (;;) {
		size_t have = c->in_end - c->in_start;
		unsigned char *p = c->in + c->in_start;
		struct bf_req *r;
		uint32_t magic, e;

		if (c->rx) {
			uint32_t want = c->rx->len - c->rx_got;
			size_t take = have < want ? have : want;

			memcpy(c->rx->buf + c->rx_got, p, take);
			c->rx_got += (uint32_t)take;
			c->in_start += take;
			if (c->rx_got < c->rx->len)
				return 1;
			req_finish(c, c->rx, 0);
			continue;
		}
		if (have < NBD_SIMPLE_REPLY_SIZE)
			return 1;
		magic = bks_get_be32(p);
		e = bks_get_be32(p + 4);
		if (magic != NBD_SIMPLE_REPLY_MAGIC) {
			conn_lost(c, "reply with a bad magic", EPROTO);
			return 0;
		}
		r = slot_find(c, bks_get_be64(p + 8));
		if (!r || r->queue != Q_WAIT) {
			conn_lost(c, "reply to no request of ours", EPROTO);
			return 0;
		}
		c->in_start += NBD_SIMPLE_REPLY_SIZE;
		if (e == NBD_ESHUTDOWN) {
			/* The worker is going away: this one is re-sent. */
			conn_lost(c, "the server is shutting down", 0);
			return 0;
		}
		if (e) {
			req_finish(c, r, nbd_error_to_errno(e));
			continue;
		}
		if (r->cmd == NBD_CMD_READ && r->len) {
			c->rx = r;
			c->rx_got = 0;
			continue;
		}
		req_finish(c, r, 0);
	}
}

static void recv_replies(struct bf_nbd *c)
{
	for (int round = 0; round < 64 && c->state == C_UP; round++) {
		ssize_t n;

		size_t want;

		if (c->rx && c->in_start == c->in_end &&
		    c->rx->len - c->rx_got >= IN_SIZE / 2) {
			/* A big payload goes straight to its buffer. */
			want = c->rx->len - c->rx_got;
			n = recv(c->fd, c->rx->buf + c->rx_got, want,
				 MSG_DONTWAIT);
			if (n > 0) {
				c->rx_got += (uint32_t)n;
				if (c->rx_got == c->rx->len)
					req_finish(c, c->rx, 0);
				/*
				 * Less than asked: the socket is empty (the
				 * watch is level-triggered: more wakes us).
				 */
				if ((size_t)n < want)
					return;
				continue;
			}
		} else {
			if (c->in_start == c->in_end) {
				c->in_start = c->in_end = 0;
			} else if (c->in_start > 0) {
				memmove(c->in, c->in + c->in_start,
					c->in_end - c->in_start);
				c->in_end -= c->in_start;
				c->in_start = 0;
			}
			want = IN_SIZE - c->in_end;
			n = recv(c->fd, c->in + c->in_end, want, MSG_DONTWAIT);
			if (n > 0) {
				c->in_end += (size_t)n;
				if (!parse_replies(c) || (size_t)n < want)
					return;
				continue;
			}
		}
		if (n == 0) {
			conn_lost(c, "the server closed the connection", 0);
			return;
		}
		if (errno == EINTR)
			continue;
		if (errno != EAGAIN)
			conn_lost(c, "receive", errno);
		return;
	}
}

/* ---- the handshake ------------------------------------------------------- */

static void hs_expect(struct bf_nbd *c, int phase, size_t need)
{
	c->hs_phase = phase;
	c->hs_need = need;
	c->hs_got = 0;
}

static void conn_up(struct bf_nbd *c)
{
	unsigned int resent = c->sendq.n;

	free(c->hs);
	c->hs = NULL;
	bks_timer_cancel(&c->retry_t);
	if (c->connecting_first) {
		c->first = c->ex;
		c->have_first = true;
		c->state = C_UP;
		c->first_rc = 0;
		set_events(c, EPOLLIN);
		return;
	}
	if (c->ex.size != c->first.size ||
	    (c->ex.flags & NBD_FLAG_READ_ONLY) !=
		(c->first.flags & NBD_FLAG_READ_ONLY)) {
		conn_broken(c);
		return;
	}
	c->state = C_UP;
	bks_timer_cancel(&c->hold_t);
	if (c->outage_ns)
		bf_log(c->log, LOG_WARNING,
		       "reconnected to %s after %llu ms (%u attempts); "
		       "re-sending %u requests",
		       c->path, (unsigned long long)ms_since(c->outage_ns),
		       c->attempts, resent);
	c->outage_ns = 0;
	c->attempts = 0;
	c->backoff_ms = 0;
	c->gave_up = false;
	set_events(c, EPOLLIN | EPOLLOUT);
}

/*
 * One complete handshake piece in c->hs.  Returns 1 to go on, 0 when the
 * handshake ended (c->state says how).
 */
static int hs_piece(struct bf_nbd *c)
{
	unsigned char *p = c->hs;
	uint32_t len;

	switch (c->hs_phase) {
	case 0:
		if (bks_get_be64(p) != NBD_MAGIC ||
		    bks_get_be64(p + 8) != NBD_IHAVEOPT ||
		    !(bks_get_be16(p + 16) & NBD_FLAG_FIXED_NEWSTYLE)) {
			conn_lost(c, "not a fixed newstyle NBD server", EPROTO);
			return 0;
		}
		hs_expect(c, 1, NBD_OPTION_REPLY_HDR_SIZE);
		return 1;
	case 1:
		len = bks_get_be32(p + 16);
		if (bks_get_be64(p) != NBD_REP_MAGIC ||
		    bks_get_be32(p + 8) != NBD_OPT_GO || len > OPT_REPLY_MAX) {
			conn_lost(c, "bad option reply", EPROTO);
			return 0;
		}
		c->hs_type = bks_get_be32(p + 12);
		if (c->hs_type & (1u << 31)) {
			conn_lost(c, "the server refused NBD_OPT_GO", EACCES);
			return 0;
		}
		if (c->hs_type == NBD_REP_ACK) {
			if (!c->hs_export) {
				conn_lost(c, "no export information", EPROTO);
				return 0;
			}
			conn_up(c);
			return 0;
		}
		if (len == 0)
			return 1; /* still phase 1: the next header */
		hs_expect(c, 2, len);
		return 1;
	default:
		if (c->hs_type == NBD_REP_INFO && c->hs_need >= 12 &&
		    bks_get_be16(p) == NBD_INFO_EXPORT) {
			c->ex.size = bks_get_be64(p + 2);
			c->ex.flags = bks_get_be16(p + 10);
			c->hs_export = true;
		}
		hs_expect(c, 1, NBD_OPTION_REPLY_HDR_SIZE);
		return 1;
	}
}

static void recv_handshake(struct bf_nbd *c)
{
	for (;;) {
		ssize_t n = recv(c->fd, c->hs + c->hs_got,
				 c->hs_need - c->hs_got, MSG_DONTWAIT);

		if (n == 0) {
			conn_lost(c, "closed during the handshake", 0);
			return;
		}
		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN)
				conn_lost(c, "handshake", errno);
			return;
		}
		c->hs_got += (size_t)n;
		if (c->hs_got == c->hs_need) {
			if (!hs_piece(c))
				return;
			if (c->hs_phase == 1)
				c->hs_got = 0;
		}
	}
}

static void on_io(struct bks_watch *w, uint32_t events)
{
	struct bf_nbd *c = w->opaque;

	if (c->state == C_HANDSHAKE) {
		recv_handshake(c);
		return;
	}
	if (c->state != C_UP)
		return;
	if (events & (EPOLLIN | EPOLLHUP | EPOLLERR))
		recv_replies(c);
	if (c->state == C_UP && (events & EPOLLOUT))
		send_some(c);
}

/* Start an attempt: connect, send the client flags and NBD_OPT_GO. */
static void conn_try(struct bf_nbd *c)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	unsigned char req[4 + NBD_OPTION_HDR_SIZE + 4 + 2 + 2], *p;
	int fd;

	c->attempts++;
	if (!c->connecting_first && supervisor_gave_up(c)) {
		if (!c->gave_up)
			bf_log(c->log, LOG_ERR,
			       "the supervisor of %s gave up on the worker: "
			       "failing I/O until it is back",
			       c->path);
		c->gave_up = true;
	}
	memcpy(sa.sun_path, c->path, strlen(c->path));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0) {
		conn_lost(c, "socket", errno);
		return;
	}
	c->fd = fd;
	/* Room for whole 1 MiB writes: one sendmsg each (blkstack/sock.h). */
	(void)bks_sock_grow_sndbuf(fd, BKS_SOCK_SNDBUF);
	/* A Unix socket connects at once, or not (EAGAIN: backlog full). */
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		conn_lost(c, "connect", errno);
		return;
	}
	/*
	 * The client's part of the handshake does not depend on the
	 * server's flags (NO_ZEROES only matters to NBD_OPT_EXPORT_NAME):
	 * send it now.  A fresh socket's buffer takes these 30 bytes.
	 */
	p = bks_put_be32(req, NBD_FLAG_C_FIXED_NEWSTYLE);
	p = bks_put_be64(p, NBD_IHAVEOPT);
	p = bks_put_be32(p, NBD_OPT_GO);
	p = bks_put_be32(p, 4 + 2 + 2);
	p = bks_put_be32(p, 0); /* the default export "" */
	p = bks_put_be16(p, 1);
	p = bks_put_be16(p, NBD_INFO_BLOCK_SIZE);
	if (send(fd, req, (size_t)(p - req), MSG_NOSIGNAL | MSG_DONTWAIT) !=
	    p - req) {
		conn_lost(c, "send the options", errno);
		return;
	}
	free(c->hs);
	c->hs = malloc(OPT_REPLY_MAX + GREETING_SIZE);
	if (!c->hs) {
		conn_lost(c, "handshake buffer", ENOMEM);
		return;
	}
	c->hs_export = false;
	hs_expect(c, 0, GREETING_SIZE);
	if (bks_watch_add(c->loop, &c->w, fd, EPOLLIN, on_io, c) < 0) {
		conn_lost(c, "watch", errno);
		return;
	}
	c->watching = true;
	c->events = EPOLLIN;
	c->state = C_HANDSHAKE;
	bks_timer_arm(&c->retry_t, (uint64_t)HANDSHAKE_MS * 1000000u);
}

static void on_retry(struct bks_timer *t)
{
	struct bf_nbd *c = t->opaque;

	if (c->state == C_HANDSHAKE) {
		conn_lost(c, "handshake timed out", ETIMEDOUT);
		return;
	}
	if (c->state == C_DOWN)
		conn_try(c);
}

/* ---- the interface ------------------------------------------------------- */

static void on_hurry(struct bks_timer *t);

int bf_nbd_new(struct bf_nbd **out, struct bks_loop *loop, const char *path,
	       unsigned int reconnect_timeout_s, struct bf_log *log,
	       struct bks_error *err)
{
	struct bf_nbd *c;
	const char *slash;

	*out = NULL;
	if (strlen(path) >= sizeof(c->path))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"NBD socket path too long: %s", path);
	c = calloc(1, sizeof(*c));
	if (!c)
		return bks_error_set(err, ENOMEM, "NBD client for %s", path);
	c->in = malloc(IN_SIZE);
	if (!c->in) {
		free(c);
		return bks_error_set(err, ENOMEM, "NBD client for %s", path);
	}
	c->loop = loop;
	c->log = log;
	c->fd = -1;
	c->state = C_DOWN;
	c->timeout_s = reconnect_timeout_s;
	memcpy(c->path, path, strlen(path) + 1);
	slash = strrchr(path, '/');
	if (slash && (size_t)(slash - path) + sizeof("/supervisor.state") <
			 sizeof(c->state_file))
		snprintf(c->state_file, sizeof(c->state_file),
			 "%.*s/supervisor.state", (int)(slash - path), path);
	bks_timer_init(loop, &c->retry_t, on_retry, c);
	bks_timer_init(loop, &c->hold_t, on_hold, c);
	bks_timer_init(loop, &c->hurry_t, on_hurry, c);
	bks_defer_init(loop, &c->flush_d, on_flush, c);
	*out = c;
	return 0;
}

int bf_nbd_connect(struct bf_nbd *c, int timeout_ms, struct bf_nbd_export *ex,
		   struct bks_error *err)
{
	uint64_t end = bks_now_ns() + (uint64_t)timeout_ms * 1000000u;

	c->connecting_first = true;
	c->first_rc = 1;
	conn_try(c);
	while (c->first_rc == 1) {
		uint64_t now = bks_now_ns();
		int rc;

		if (now >= end) {
			sock_close(c);
			c->state = C_DOWN;
			c->first_rc = -ETIMEDOUT;
			break;
		}
		rc = bks_loop_run_once(c->loop,
				       (int)((end - now) / 1000000u) + 1);
		if (rc < 0) {
			c->first_rc = rc;
			break;
		}
	}
	c->connecting_first = false;
	bks_timer_cancel(&c->retry_t);
	free(c->hs);
	c->hs = NULL;
	if (c->first_rc < 0)
		return bks_error_set(err, -c->first_rc,
				     "NBD connection to %s: %s", c->path,
				     c->hs_fail ? c->hs_fail : "no answer");
	*ex = c->first;
	return 0;
}

void bf_nbd_submit(struct bf_nbd *c, struct bf_req *req)
{
	unsigned char *p;

	req->queue = Q_NONE;
	req->sent = 0;
	if (c->state == C_BROKEN || (c->state != C_UP && c->gave_up) ||
	    (c->state != C_UP && c->timeout_s == 0)) {
		req->done(req, -EIO);
		return;
	}
	if (slot_get(c, req) < 0) {
		req->done(req, -ENOMEM);
		return;
	}
	c->in_flight++;
	p = bks_put_be32(req->hdr, NBD_REQUEST_MAGIC);
	p = bks_put_be16(p, req->flags);
	p = bks_put_be16(p, req->cmd);
	p = bks_put_be64(p, req->cookie);
	p = bks_put_be64(p, req->off);
	bks_put_be32(p, req->len);
	req->held_ns = bks_now_ns();
	list_add_tail(&c->sendq, req, Q_SEND);
	if (c->state == C_UP)
		bks_defer_schedule(&c->flush_d);
	else if (!c->hold_t.armed)
		hold_check(c);
}

/* Hurried and connected: fail everything if the oldest waited too long. */
static void on_hurry(struct bks_timer *t)
{
	struct bf_nbd *c = t->opaque;
	uint64_t now = bks_now_ns(), lim = (uint64_t)c->hurry_ms * 1000000u;
	uint64_t oldest = 0;
	unsigned int n;

	if (!c->hurry_ms)
		return;
	bks_timer_arm(&c->hurry_t, 1000000000u);
	if (c->state != C_UP)
		return; /* hold_check bounds held requests */
	if (c->waitq.head)
		oldest = c->waitq.head->held_ns;
	if (c->sendq.head && (!oldest || c->sendq.head->held_ns < oldest))
		oldest = c->sendq.head->held_ns;
	if (!oldest || now - oldest < lim)
		return;
	n = c->in_flight;
	bf_log(c->log, LOG_ERR,
	       "%s has not answered for %llu ms while hurried: dropping the "
	       "connection, %u requests fail with EIO",
	       c->path, (unsigned long long)((now - oldest) / 1000000u), n);
	/* Closed first, so that no late reply can match a reused cookie. */
	sock_close(c);
	bks_defer_cancel(&c->flush_d);
	c->rx = NULL;
	c->in_start = c->in_end = 0;
	c->state = C_DOWN;
	c->outage_ns = now;
	c->attempts = 0;
	c->backoff_ms = RETRY_FIRST_MS;
	bf_nbd_fail_all(c, -EIO);
	bks_timer_arm(&c->retry_t, 0);
}

void bf_nbd_hurry(struct bf_nbd *c, unsigned int ms)
{
	c->hurry_ms = ms;
	if (!ms) {
		bks_timer_cancel(&c->hurry_t);
		return;
	}
	bf_log(c->log, LOG_INFO,
	       "hurried: no request waits more than %u ms for %s any more", ms,
	       c->path);
	bks_timer_arm(&c->hurry_t, 0);
	hold_check(c);
}

void bf_nbd_free(struct bf_nbd *c)
{
	if (!c)
		return;
	sock_close(c);
	bks_timer_cancel(&c->retry_t);
	bks_timer_cancel(&c->hold_t);
	bks_timer_cancel(&c->hurry_t);
	bks_defer_cancel(&c->flush_d);
	free(c->hs);
	free(c->in);
	free(c->slots);
	free(c->gens);
	free(c->free_slots);
	free(c);
}
