/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD export: the server -- listening and accepting, the connection
 * table and its limits (eviction, the handshake deadline, the stall
 * check), receiving and sending, hold, shutdown, and the public
 * functions of include/blkstack/nbd-server.h.  See internal.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "blkstack/sock.h"
#include "internal.h"

static void conn_free(struct nbd_conn *c)
{
	struct bks_nbd_server *srv = c->srv;

	nbd_conn_close(c); /* if not closed yet */
	link_del(&c->link);
	bks_defer_cancel(&c->defer);
	bks_timer_cancel(&c->timer);
	for (unsigned int i = 0; i < c->nslots; i++) {
		free(c->slots[i].buf);
	}
	srv->buf_total -= c->buf_total;
	srv->stats.buffer_bytes = srv->buf_total;
	free(c->slots);
	bks_req_pool_free(&c->pool);
	free(c->inbuf);
	free(c->outbuf);
	free(c);
	if (srv->stopping)
		nbd_srv_kick(srv); /* the last connection ends the shutdown */
}

/* The client has closed its side: finish what it sent, then close. */
static void conn_eof(struct nbd_conn *c)
{
	c->eof = true;
	if (c->rx) {
		/* Disconnected in the middle of a write payload. */
		struct nbd_slot *s = c->rx;

		c->rx = NULL;
		nbd_slot_release(s);
	}
}

/*
 * Parse what the input buffer holds.  Returns PARSE_MORE when it needs
 * more input, PARSE_STALL when it cannot go on for now, PARSE_STOP when
 * the connection reads no more.
 */
static int conn_parse(struct nbd_conn *c)
{
	for (;;) {
		size_t avail = c->inlen - c->inoff;
		int rc;

		if (c->dead)
			return PARSE_STOP;
		if (c->skip) {
			size_t n = avail < c->skip ? avail : (size_t)c->skip;

			c->inoff += n;
			c->skip -= n;
			if (c->skip)
				return PARSE_MORE;
			continue;
		}
		if (c->rx) {
			struct nbd_slot *s = c->rx;
			size_t want = s->len - s->rx_done;
			size_t n = avail < want ? avail : want;

			memcpy(s->buf + s->skew + s->rx_done,
			       c->inbuf + c->inoff, n);
			c->inoff += n;
			s->rx_done += (uint32_t)n;
			if (s->rx_done < s->len)
				return PARSE_MORE;
			c->rx = NULL;
			nbd_slot_dispatch(s);
			continue;
		}
		if (!nbd_conn_can_parse(c))
			return c->stalled ? PARSE_STALL : PARSE_STOP;
		switch (c->phase) {
		case PH_CLIENT_FLAGS:
			if (avail < 4)
				return PARSE_MORE;
			rc = nbd_client_flags(c);
			break;
		case PH_OPTIONS:
			if (c->outoff < c->outlen)
				return PARSE_STALL; /* one reply at a time */
			if (avail < NBD_OPTION_HDR_SIZE)
				return PARSE_MORE;
			rc = nbd_option(c);
			break;
		default:
			if (nbd_conn_backlogged(c))
				return PARSE_STALL; /* until replies go */
			if (avail < NBD_REQUEST_SIZE)
				return PARSE_MORE;
			rc = nbd_request(c);
			break;
		}
		if (rc != 0)
			return rc;
	}
}

/*
 * Receive into the input buffer, or straight into the buffer of the
 * write payload being received when that is large.  Returns the bytes
 * received, 0 at end of file, -1 when nothing came (or c was closed).
 */
static ssize_t conn_recv(struct nbd_conn *c)
{
	struct nbd_slot *s = c->rx;
	unsigned char *dst;
	size_t room;
	bool direct = false;
	ssize_t n;

	if (s && c->inoff == c->inlen &&
	    s->len - s->rx_done >= NBD_DIRECT_READ_MIN) {
		dst = s->buf + s->skew + s->rx_done;
		room = s->len - s->rx_done;
		direct = true;
	} else {
		if (c->inoff > 0) {
			memmove(c->inbuf, c->inbuf + c->inoff,
				c->inlen - c->inoff);
			c->inlen -= c->inoff;
			c->inoff = 0;
		}
		dst = c->inbuf + c->inlen;
		room = NBD_INBUF_SIZE - c->inlen;
		if (room == 0) {
			/* Cannot happen: whole options fit, and get parsed. */
			nbd_conn_drop(c);
			return -1;
		}
	}
	do {
		n = recv(c->fd, dst, room, MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			nbd_conn_close(c); /* reset by the client */
		return -1;
	}
	if (direct)
		s->rx_done += (uint32_t)n;
	else
		c->inlen += (size_t)n;
	if (n > 0)
		c->progress_ns = bks_now_ns();
	return n;
}

/* The socket is readable: receive and parse, a bounded number of times. */
static void conn_read(struct nbd_conn *c)
{
	for (int i = 0; i < NBD_READS_PER_EVENT; i++) {
		ssize_t n;

		if (!nbd_conn_can_read(c))
			return;
		n = conn_recv(c);
		if (n == 0) {
			conn_eof(c);
			return;
		}
		if (n < 0)
			return;
		if (conn_parse(c) != PARSE_MORE)
			return;
	}
}

/* Write pending output, as much as the socket takes. */
static void conn_send(struct nbd_conn *c)
{
	struct iovec iov[NBD_SEND_IOV];
	struct msghdr msg = {.msg_iov = iov};

	while (!c->dead && nbd_conn_output_pending(c)) {
		struct nbd_link *l;
		size_t n = 0;
		ssize_t w;

		if (c->outoff < c->outlen) {
			iov[n].iov_base = c->outbuf + c->outoff;
			iov[n++].iov_len = c->outlen - c->outoff;
		}
		for (l = c->outq.next; l != &c->outq && n + 2 <= NBD_SEND_IOV;
		     l = l->next) {
			struct nbd_slot *s =
			    link_entry(l, struct nbd_slot, link);
			size_t off = s->sent;

			if (off < s->rep_len) {
				iov[n].iov_base = s->rep + off;
				iov[n++].iov_len = s->rep_len - off;
				off = 0;
			} else {
				off -= s->rep_len;
			}
			if (off < s->data_len) {
				iov[n].iov_base = (void *)(s->data + off);
				iov[n++].iov_len = s->data_len - off;
			}
		}
		msg.msg_iovlen = n;
		w = sendmsg(c->fd, &msg, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				nbd_conn_close(c); /* the client is gone */
			return;
		}
		if (w > 0)
			c->progress_ns = bks_now_ns();
		if (c->outoff < c->outlen) {
			size_t t = c->outlen - c->outoff;

			t = (size_t)w < t ? (size_t)w : t;
			c->outoff += t;
			w -= (ssize_t)t;
		}
		while (w > 0 && !link_empty(&c->outq)) {
			struct nbd_slot *s =
			    link_entry(c->outq.next, struct nbd_slot, link);
			size_t left = s->rep_len + s->data_len - s->sent;
			size_t t = (size_t)w < left ? (size_t)w : left;

			s->sent += t;
			c->out_bytes -= t;
			w -= (ssize_t)t;
			if (s->sent == s->rep_len + s->data_len) {
				link_del(&s->link);
				nbd_slot_release(s);
			}
		}
	}
}

/* Close c if it is finished: disconnected, aborted, or shutting down. */
static void conn_check_close(struct nbd_conn *c)
{
	bool out = nbd_conn_output_pending(c);

	if (c->close_after_send && !out)
		nbd_conn_close(c);
	else if (c->phase != PH_TRANSMISSION && (c->eof || c->srv->stopping))
		nbd_conn_close(c);
	else if (c->phase == PH_TRANSMISSION &&
		 (c->disc || c->eof || c->srv->stopping) && c->nused == 0 &&
		 !out)
		nbd_conn_close(c);
}

/*
 * Is c stuck in the middle of something, waiting on its client: replies
 * it does not take, or a request it sent only part of?  (A header that
 * waits for a slot or a budget waits on us, not on the client.)
 */
static bool conn_stuck(const struct nbd_conn *c)
{
	return c->phase == PH_TRANSMISSION && !c->dead &&
	       (nbd_conn_output_pending(c) || c->rx || c->skip ||
		(c->inoff < c->inlen && !c->stalled));
}

static void conn_update_events(struct nbd_conn *c)
{
	uint32_t ev = 0;

	/*
	 * The stall check: armed while stuck, rechecked when it fires.
	 * Not re-armed on every byte: the progress time is enough.
	 */
	if (!c->stall_armed && conn_stuck(c)) {
		c->stall_armed = true;
		bks_timer_arm(&c->timer, c->srv->stall_ns);
	}

	if (nbd_conn_can_read(c))
		ev |= EPOLLIN;
	if (nbd_conn_output_pending(c))
		ev |= EPOLLOUT;
	if (ev == c->events)
		return;
	if (bks_watch_mod(&c->watch, ev) < 0) {
		nbd_conn_close(c);
		return;
	}
	c->events = ev;
}

/*
 * Bring c up to date: send, parse what is buffered (handshake replies go
 * one at a time, so these alternate), close if finished, and watch for
 * what it waits on.
 */
static void conn_settle(struct nbd_conn *c)
{
	for (int i = 0;; i++) {
		size_t before;

		conn_send(c);
		if (!nbd_conn_can_parse(c) || c->inoff == c->inlen)
			break;
		if (i == 8) {
			nbd_conn_kick(c); /* more next time round */
			break;
		}
		before = c->inoff;
		conn_parse(c);
		if (c->inoff == before)
			break;
	}
	if (c->dead)
		return;
	conn_check_close(c);
	if (!c->dead)
		conn_update_events(c);
}

static void conn_io(struct bks_watch *w, uint32_t events)
{
	struct nbd_conn *c = w->opaque;

	if (events & EPOLLERR) {
		nbd_conn_close(c);
		return;
	}
	if ((events & (EPOLLIN | EPOLLHUP)) && nbd_conn_can_read(c))
		conn_read(c);
	if ((events & EPOLLHUP) && !c->dead) {
		/* Hung up both ways: nobody will read the replies. */
		nbd_conn_close(c);
		return;
	}
	if (!c->dead)
		conn_settle(c);
}

static void conn_defer_fn(struct bks_defer *d)
{
	struct nbd_conn *c = d->opaque;

	if (!c->dead)
		conn_settle(c);
	if (c->dead && c->busy == 0)
		conn_free(c);
}

/* The handshake deadline, then the stall check (conn_update_events). */
static void conn_timeout(struct bks_timer *t)
{
	struct nbd_conn *c = t->opaque;
	struct bks_nbd_server *srv = c->srv;
	uint64_t now, idle;

	c->stall_armed = false;
	if (c->dead)
		return;
	if (c->phase != PH_TRANSMISSION) {
		srv->stats.timed_out++; /* too slow to negotiate */
		nbd_conn_close(c);
		return;
	}
	if (!conn_stuck(c))
		return; /* unstuck meanwhile: idle is fine */
	now = bks_now_ns();
	idle = now > c->progress_ns ? now - c->progress_ns : 0;
	if (idle < srv->stall_ns) {
		c->stall_armed = true;
		bks_timer_arm(&c->timer, srv->stall_ns - idle);
		return;
	}
	srv->stats.timed_out++; /* nothing moved for stall_ns */
	nbd_conn_close(c);
}

/* A new client on fd (non-blocking) of process pid.  Returns 0 or -errno. */
static int conn_new(struct bks_nbd_server *srv, int fd, pid_t pid)
{
	struct nbd_conn *c;
	int rc = -ENOMEM;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->srv = srv;
	c->fd = fd;
	c->peer_pid = pid;
	/* Room for whole large replies: one sendmsg each (sock.h). */
	(void)bks_sock_grow_sndbuf(fd, BKS_SOCK_SNDBUF);
	c->nslots = srv->max_in_flight;
	link_init(&c->link);
	link_init(&c->blink);
	link_init(&c->free);
	link_init(&c->outq);
	bks_defer_init(srv->loop, &c->defer, conn_defer_fn, c);
	bks_timer_init(srv->loop, &c->timer, conn_timeout, c);
	c->slots = calloc(c->nslots, sizeof(*c->slots));
	c->inbuf = malloc(NBD_INBUF_SIZE);
	if (!c->slots || !c->inbuf)
		goto out;
	if (bks_req_pool_init(&c->pool, c->nslots) < 0)
		goto out;
	for (unsigned int i = 0; i < c->nslots; i++) {
		struct nbd_slot *s = &c->slots[i];

		s->conn = c;
		s->state = SLOT_FREE;
		link_add_tail(&c->free, &s->link);
	}
	if (nbd_greet(c) < 0)
		goto out;
	c->events = EPOLLIN | EPOLLOUT;
	rc = bks_watch_add(srv->loop, &c->watch, fd, c->events, conn_io, c);
	if (rc < 0)
		goto out;
	bks_timer_arm(&c->timer, srv->handshake_ns);
	c->seq = ++srv->seq;
	c->progress_ns = bks_now_ns();
	link_add_tail(&srv->conns, &c->link);
	srv->nopen++;
	srv->stats.connections = srv->nopen;
	srv->stats.connections_total++;
	return 0;
out:
	bks_defer_cancel(&c->defer);
	bks_req_pool_free(&c->pool);
	free(c->slots);
	free(c->inbuf);
	free(c->outbuf);
	free(c);
	return rc;
}

/*
 * May c be closed to make room for a newcomer?  When it is idle: nothing
 * in progress (no slot in use: nothing in flight, held, or queued),
 * nothing half received or half sent, not closing anyway.
 */
static bool conn_idle(const struct nbd_conn *c)
{
	return !c->dead && !c->eof && !c->disc && !c->close_after_send &&
	       c->nused == 0 && c->busy == 0 && !c->rx && !c->skip &&
	       c->inoff == c->inlen && !nbd_conn_output_pending(c);
}

/*
 * Or when it does not read its replies: some wait, and not a byte has
 * gone for NBD_STUCK_EVICT_NS (the stall check would drop it later).  A
 * client that reads takes bytes within milliseconds.
 */
static bool conn_not_reading(const struct nbd_conn *c, uint64_t now)
{
	return !c->dead && c->phase == PH_TRANSMISSION &&
	       nbd_conn_output_pending(c) &&
	       now - c->progress_ns >= NBD_STUCK_EVICT_NS;
}

/*
 * Should a go before b?  See "Connections" in nbd-server.h.
 *
 *   - A client that does not read its replies, the longest stuck first.
 *   - A client still negotiating, the oldest first: a real client
 *     negotiates in milliseconds, so the oldest is the likeliest stuck
 *     (and the handshake deadline would drop it anyway).
 *   - A client that has never sent a request, then one that has; in
 *     each, the most recently accepted first: seniority.
 *
 * Why seniority, and not the longest idle as a cache would evict: the
 * device connection is exactly the one that idles longest, and every
 * idler that came after it would push it out.  By seniority an idler can
 * only push out what came after the device connection: other idlers
 * (and each idler of a flood pushes out the one before it).  A new
 * device connection (after a re-attach) is accepted like any newcomer;
 * it is the youngest for a moment, and safe from idlers once it has
 * carried a request -- the device's first I/O (the partition scan or
 * udev's probe) comes at once.  Until then it competes with them.
 */
static bool evict_before(const struct nbd_conn *a, const struct nbd_conn *b,
			 uint64_t now)
{
	bool ha = a->phase != PH_TRANSMISSION, hb = b->phase != PH_TRANSMISSION;
	bool sa = conn_not_reading(a, now), sb = conn_not_reading(b, now);

	if (sa != sb)
		return sa;
	if (sa)
		return a->progress_ns < b->progress_ns;
	if (ha != hb)
		return ha;
	if (ha)
		return a->seq < b->seq;
	if ((a->nrequests == 0) != (b->nrequests == 0))
		return a->nrequests == 0;
	return a->seq > b->seq;
}

/* Connections open now from process pid. */
static unsigned int srv_conns_of(const struct bks_nbd_server *srv, pid_t pid)
{
	const struct nbd_link *l;
	unsigned int n = 0;

	for (l = srv->conns.next; l != &srv->conns; l = l->next) {
		const struct nbd_conn *c =
		    link_entry(l, const struct nbd_conn, link);

		n += !c->dead && c->peer_pid == pid;
	}
	return n;
}

/*
 * Make room for a newcomer of process pid (SO_PEERCRED; 0 if unknown):
 * close the idle connection that should go first (evict_before()), and
 * return true; or return false if the newcomer is refused (nothing may
 * go).
 *
 * One process holds at most NBD_PER_PROCESS_MAX connections: beyond
 * that its newcomer takes the place of its own youngest idle one.  So
 * one client -- the 16 idlers of the defect -- can never fill the table:
 * the rest is room for everyone else, the device among them.
 *
 * When the table is full, the newcomer's own connections are passed
 * over: a client opening its multi-conn set (nbdfuse opens 4, one after
 * the other) must not push out its first ones, each being the youngest
 * when the next comes.
 */
static bool srv_make_room(struct bks_nbd_server *srv, pid_t pid)
{
	unsigned int own = pid > 0 ? srv_conns_of(srv, pid) : 0;
	bool own_only = own >= NBD_PER_PROCESS_MAX;
	struct nbd_conn *victim = NULL;
	uint64_t now = bks_now_ns();
	struct nbd_link *l;

	if (!own_only && srv->nopen < srv->max_connections)
		return true;
	for (l = srv->conns.next; l != &srv->conns; l = l->next) {
		struct nbd_conn *c = link_entry(l, struct nbd_conn, link);

		if (!conn_idle(c) && !conn_not_reading(c, now))
			continue;
		if (pid > 0 && (c->peer_pid == pid) != own_only)
			continue;
		if (!victim || evict_before(c, victim, now))
			victim = c;
	}
	if (!victim)
		return false;
	srv->stats.evicted++;
	nbd_conn_close(victim);
	return true;
}

/* The process at the other end of fd, or 0. */
static pid_t peer_pid(int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0)
		return 0;
	return cred.pid;
}

static void srv_accept(struct bks_watch *w, uint32_t events)
{
	struct bks_nbd_server *srv = w->opaque;

	(void)events;
	for (int i = 0; i < NBD_ACCEPTS_PER_EVENT; i++) {
		int fd = accept4(srv->listen_fd, NULL, NULL,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);
		pid_t pid;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			/*
			 * Out of file descriptors or memory: the socket
			 * stays readable, so pause rather than spin.
			 */
			bks_watch_del(&srv->lwatch);
			bks_timer_arm(&srv->accept_timer, NBD_ACCEPT_RETRY_NS);
			return;
		}
		pid = peer_pid(fd);
		if (!srv_make_room(srv, pid) || conn_new(srv, fd, pid) < 0) {
			close(fd);
			srv->stats.refused++;
		}
	}
}

static void srv_accept_retry(struct bks_timer *t)
{
	struct bks_nbd_server *srv = t->opaque;

	if (srv->stopping)
		return;
	if (bks_watch_add(srv->loop, &srv->lwatch, srv->listen_fd, EPOLLIN,
			  srv_accept, srv) < 0)
		bks_timer_arm(&srv->accept_timer, NBD_ACCEPT_RETRY_NS);
}

/*
 * The server's deferred call: wake connections waiting for buffers, tell
 * the owner about the end of a shutdown -- from the top of the loop, never
 * from inside a completion.
 */
static void srv_defer_fn(struct bks_defer *d)
{
	struct bks_nbd_server *srv = d->opaque;

	/* Buffers came back: connections waiting for budget try again. */
	while (!link_empty(&srv->budget)) {
		struct nbd_conn *c =
		    link_entry(srv->budget.next, struct nbd_conn, blink);

		link_del(&c->blink);
		c->budget_wait = false;
		c->stalled = false;
		nbd_conn_kick(c);
	}
	if (srv->stopping && !srv->done_sent && link_empty(&srv->conns)) {
		srv->done_sent = true;
		bks_timer_cancel(&srv->stop_timer);
		/* Last: the callback may free the server. */
		if (srv->done)
			srv->done(srv->done_arg);
	}
}

static void srv_stop_timeout(struct bks_timer *t)
{
	struct bks_nbd_server *srv = t->opaque;
	struct nbd_link *l;

	/* Clients that do not take their replies lose them. */
	for (l = srv->conns.next; l != &srv->conns; l = l->next)
		nbd_conn_close(link_entry(l, struct nbd_conn, link));
}

static const struct bks_export_ops nbd_export_ops;

int bks_nbd_export_new(struct bks_export **out, struct bks_loop *loop,
		       struct bks_chain *chain, int listen_fd,
		       const struct bks_nbd_config *cfg, struct bks_error *err)
{
	struct bks_nbd_server *srv = NULL;
	const char *name;
	int fl, rc = 0;

	*out = NULL;
	if (!loop || !chain || !cfg || listen_fd < 0)
		return bks_error_setmsg(err, EINVAL, "nbd: invalid arguments");
	name = cfg->name ? cfg->name : "";
	if (strlen(name) > NBD_STRING_MAX ||
	    (cfg->description && strlen(cfg->description) > NBD_STRING_MAX))
		return bks_error_setmsg(err, EINVAL,
					"nbd: export name or description "
					"longer than %u bytes",
					NBD_STRING_MAX);
	/*
	 * accept() is called until it would block: on a blocking socket it
	 * would block the loop.
	 */
	fl = fcntl(listen_fd, F_GETFL);
	if (fl < 0 || (!(fl & O_NONBLOCK) &&
		       fcntl(listen_fd, F_SETFL, fl | O_NONBLOCK) < 0))
		return bks_error_set(err, errno,
				     "nbd: make the listening socket "
				     "non-blocking");
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return bks_error_set(err, ENOMEM, "nbd: allocate server");
	srv->loop = loop;
	srv->chain = chain;
	srv->listen_fd = listen_fd;
	srv->read_only = cfg->read_only;
	srv->max_connections = cfg->max_connections
				   ? cfg->max_connections
				   : NBD_DEFAULT_MAX_CONNECTIONS;
	srv->max_in_flight =
	    cfg->max_in_flight ? cfg->max_in_flight : NBD_DEFAULT_MAX_IN_FLIGHT;
	if (srv->max_in_flight > NBD_MAX_IN_FLIGHT_LIMIT)
		srv->max_in_flight = NBD_MAX_IN_FLIGHT_LIMIT;
	srv->handshake_ns = (uint64_t)(cfg->handshake_timeout_ms
					   ? cfg->handshake_timeout_ms
					   : BKS_NBD_HANDSHAKE_TIMEOUT_MS) *
			    NS_PER_MS;
	srv->stall_ns =
	    (uint64_t)(cfg->stall_timeout_ms ? cfg->stall_timeout_ms
					     : BKS_NBD_STALL_TIMEOUT_MS) *
	    NS_PER_MS;
	srv->bs = srv_info(srv)->block_size;
	srv->max_payload = BKS_NBD_MAX_PAYLOAD;
	/* A chain with a request size limit gets it advertised. */
	if (srv_info(srv)->max_io && srv_info(srv)->max_io < srv->max_payload)
		srv->max_payload =
		    srv_info(srv)->max_io >= srv->bs
			? (uint32_t)align_down(srv_info(srv)->max_io, srv->bs)
			: srv->bs;
	link_init(&srv->conns);
	link_init(&srv->budget);
	bks_defer_init(loop, &srv->defer, srv_defer_fn, srv);
	bks_timer_init(loop, &srv->accept_timer, srv_accept_retry, srv);
	bks_timer_init(loop, &srv->stop_timer, srv_stop_timeout, srv);
	srv->name = strdup(name);
	if (cfg->description)
		srv->description = strdup(cfg->description);
	if (!srv->name || (cfg->description && !srv->description)) {
		rc = bks_error_set(err, ENOMEM, "nbd: allocate server");
		goto out;
	}
	bks_export_init(&srv->exp, &nbd_export_ops, srv, chain);
	*out = &srv->exp;
	srv = NULL;
out:
	if (srv) {
		free(srv->name);
		free(srv->description);
		free(srv);
	}
	return rc;
}

/* ---- the export's ops (include/blkstack/export.h) ------------------------ */

static int nbd_start(void *state, struct bks_error *err)
{
	struct bks_nbd_server *srv = state;
	int rc;

	rc = bks_watch_add(srv->loop, &srv->lwatch, srv->listen_fd, EPOLLIN,
			   srv_accept, srv);
	if (rc < 0)
		return bks_error_set(err, -rc,
				     "nbd: watch the listening socket");
	return 0;
}

/* Requests in the chain complete and are answered; then all is closed. */
static void nbd_shutdown(void *state, void (*done)(void *arg), void *arg)
{
	struct bks_nbd_server *srv = state;
	struct nbd_link *l, *next;

	srv->done = done;
	srv->done_arg = arg;
	srv->done_sent = false;
	nbd_srv_kick(srv);
	if (srv->stopping)
		return;
	srv->stopping = true;
	bks_watch_del(&srv->lwatch);
	bks_timer_cancel(&srv->accept_timer);
	for (l = srv->conns.next; l != &srv->conns; l = next) {
		struct nbd_conn *c = link_entry(l, struct nbd_conn, link);

		next = l->next;
		if (c->rx) {
			/* A half-received write is never started. */
			struct nbd_slot *s = c->rx;

			c->rx = NULL;
			nbd_slot_release(s);
		}
		c->skip = 0;
		if (c->phase != PH_TRANSMISSION)
			nbd_conn_close(c);
		else
			nbd_conn_kick(c);
	}
	bks_timer_arm(&srv->stop_timer, NBD_SHUTDOWN_TIMEOUT_NS);
}

/* After shutdown: no request of ours is in the chain. */
static void nbd_free(void *state)
{
	struct bks_nbd_server *srv = state;

	bks_watch_del(&srv->lwatch);
	/*
	 * Connections first: closing them may schedule our deferred call,
	 * which is cancelled after.
	 */
	while (!link_empty(&srv->conns))
		conn_free(link_entry(srv->conns.next, struct nbd_conn, link));
	bks_timer_cancel(&srv->accept_timer);
	bks_timer_cancel(&srv->stop_timer);
	bks_defer_cancel(&srv->defer);
	free(srv->name);
	free(srv->description);
	free(srv);
}

static void nbd_stats(void *state, struct bks_export_stats *out)
{
	const struct bks_nbd_server *srv = state;

	*out = srv->stats;
}

static const struct bks_export_ops nbd_export_ops = {
    .name = "nbd",
    .start = nbd_start,
    .shutdown = nbd_shutdown,
    .stats = nbd_stats,
    .free = nbd_free,
};
