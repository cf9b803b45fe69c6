/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD export: a connection's state shared by the protocol phases --
 * its slots and their buffers under the memory budgets, whether it may
 * read and parse, closing it.  See internal.h.
 */
#include <stdlib.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "internal.h"

/* Read-only: configured so, or the chain is (or cannot write at all). */
bool nbd_srv_read_only(const struct bks_nbd_server *srv)
{
	return srv->read_only || srv_info(srv)->read_only ||
	       !(srv_info(srv)->ops & BKS_OPF(BKS_OP_WRITE));
}

/* Schedule the connection's deferred call (output, parsing, closing). */
void nbd_conn_kick(struct nbd_conn *c)
{
	bks_defer_schedule(&c->defer);
}

void nbd_srv_kick(struct bks_nbd_server *srv)
{
	bks_defer_schedule(&srv->defer);
}

/* Put s back on its connection's free list; it keeps its buffers. */
void nbd_slot_release(struct nbd_slot *s)
{
	struct nbd_conn *c = s->conn;

	s->state = SLOT_FREE;
	s->data = NULL;
	s->data_len = s->rep_len = s->sent = 0;
	link_add_head(&c->free, &s->link);
	c->nused--;
	if (c->stalled && !c->budget_wait) {
		/* A request header may be waiting for this slot. */
		c->stalled = false;
		nbd_conn_kick(c);
	}
	/* Its buffer may be freed now: connections waiting for budget. */
	if (!link_empty(&c->srv->budget))
		nbd_srv_kick(c->srv);
}

/* Free the data buffer of a free slot, to make room under a budget. */
static void slot_drop_buf(struct nbd_conn *c, struct nbd_slot *s)
{
	free(s->buf);
	c->buf_total -= s->bufsize;
	c->srv->buf_total -= s->bufsize;
	c->srv->stats.buffer_bytes = c->srv->buf_total;
	s->buf = NULL;
	s->bufsize = 0;
}

/*
 * Free idle buffers (of free slots other than keep) of c, or of every
 * connection when c is NULL, until *total - keep's buffer + size fits
 * budget.  Returns whether it fits.
 */
static bool drop_idle_bufs(struct bks_nbd_server *srv, struct nbd_conn *c,
			   const struct nbd_slot *keep, const size_t *total,
			   size_t size, size_t budget)
{
	struct nbd_link *cl = c ? &c->link : srv->conns.next;

	for (; cl != &srv->conns; cl = cl->next) {
		struct nbd_conn *o = link_entry(cl, struct nbd_conn, link);
		struct nbd_link *l;

		for (l = o->free.next; l != &o->free; l = l->next) {
			struct nbd_slot *t =
			    link_entry(l, struct nbd_slot, link);

			if (*total - keep->bufsize + size <= budget)
				return true;
			if (t != keep && t->buf)
				slot_drop_buf(o, t);
		}
		if (c)
			break;
	}
	return *total - keep->bufsize + size <= budget;
}

/*
 * Wait for the server's buffer budget: stalled, on the budget list, kicked
 * by srv_defer_fn() when a slot anywhere is released.
 */
static void conn_budget_wait(struct nbd_conn *c)
{
	if (c->budget_wait)
		return;
	c->budget_wait = true;
	link_add_tail(&c->srv->budget, &c->blink);
}

/*
 * A free slot with a data buffer of at least need bytes, taken off the
 * free list; NULL if the connection has to wait for one (all in use, or
 * a buffer budget spent by requests in progress: see nbd-server.h).
 * *err is set to NBD_ENOMEM (and the slot returned without a big enough
 * buffer) when memory ran out.
 */
struct nbd_slot *nbd_slot_get(struct nbd_conn *c, size_t need, uint32_t *err)
{
	struct bks_nbd_server *srv = c->srv;
	struct nbd_slot *s = NULL;
	struct nbd_link *l;
	size_t size;
	void *p;

	if (link_empty(&c->free))
		return NULL;
	/* A buffer that is big enough already, else the biggest one. */
	for (l = c->free.next; l != &c->free; l = l->next) {
		struct nbd_slot *t = link_entry(l, struct nbd_slot, link);

		if (t->bufsize >= need) {
			s = t;
			break;
		}
		if (!s || t->bufsize > s->bufsize)
			s = t;
	}
	if (s->bufsize < need) {
		size = align_up(need, NBD_BUF_STEP);
		/*
		 * The connection's budget; with nothing else in progress,
		 * one request of any size (the idle buffers all go).
		 */
		if (!drop_idle_bufs(srv, c, s, &c->buf_total, size,
				    c->nused == 0 ? SIZE_MAX
						  : BKS_NBD_CONN_BUF_BUDGET))
			return NULL; /* requests in progress hold it: wait */
		/*
		 * The server's budget, but a floor for a connection with
		 * nothing in progress.  Idle buffers of anyone may go.
		 */
		if (!(c->nused == 0 && size <= BKS_NBD_CONN_BUF_FLOOR) &&
		    !drop_idle_bufs(srv, NULL, s, &srv->buf_total, size,
				    BKS_NBD_SRV_BUF_BUDGET)) {
			conn_budget_wait(c);
			return NULL;
		}
		slot_drop_buf(c, s);
		if (posix_memalign(&p, NBD_BUF_ALIGN, size) == 0) {
			s->buf = p;
			s->bufsize = size;
			c->buf_total += size;
			srv->buf_total += size;
			srv->stats.buffer_bytes = srv->buf_total;
		} else {
			*err = NBD_ENOMEM;
		}
	}
	link_del(&s->link);
	c->nused++;
	return s;
}

bool nbd_conn_output_pending(const struct nbd_conn *c)
{
	return c->outoff < c->outlen || !link_empty(&c->outq);
}

/* Can c take more input now (parse what is buffered)? */
bool nbd_conn_can_parse(const struct nbd_conn *c)
{
	return !c->dead && !c->disc && !c->stalled && !c->close_after_send &&
	       !c->srv->stopping;
}

/*
 * Too many replies wait for c (the client does not read them): take no
 * new request until they have gone down (back-pressure).
 */
bool nbd_conn_backlogged(const struct nbd_conn *c)
{
	return c->phase == PH_TRANSMISSION &&
	       c->out_bytes >= BKS_NBD_CONN_OUT_HIGH;
}

/* Should c read its socket now? */
bool nbd_conn_can_read(const struct nbd_conn *c)
{
	if (!nbd_conn_can_parse(c) || c->eof)
		return false;
	/* A payload under way is still received: it is not a new request. */
	if (nbd_conn_backlogged(c) && !c->rx && !c->skip)
		return false;
	/* Option haggling is one reply at a time: no need to read ahead. */
	return c->phase != PH_OPTIONS || c->outoff == c->outlen;
}

/* Disconnect c for breaking the protocol.  Returns PARSE_STOP. */
int nbd_conn_drop(struct nbd_conn *c)
{
	c->srv->stats.dropped++;
	nbd_conn_close(c);
	return PARSE_STOP;
}

/*
 * Close c's socket.  Requests not in the chain are forgotten; those in
 * it complete into nothing, and c is freed (by its deferred call) when
 * the last one has.
 */
void nbd_conn_close(struct nbd_conn *c)
{
	struct bks_nbd_server *srv = c->srv;

	if (c->dead)
		return;
	c->dead = true;
	bks_watch_del(&c->watch);
	close(c->fd);
	c->fd = -1;
	bks_timer_cancel(&c->timer);
	c->stall_armed = false;
	if (c->budget_wait) {
		link_del(&c->blink);
		c->budget_wait = false;
	}
	srv->nopen--;
	srv->stats.connections = srv->nopen;
	c->out_bytes = 0;
	c->outoff = c->outlen = 0;
	c->inoff = c->inlen = 0;
	c->skip = 0;
	c->rx = NULL;
	for (unsigned int i = 0; i < c->nslots; i++) {
		struct nbd_slot *s = &c->slots[i];

		switch (s->state) {
		case SLOT_REPLY:
			link_del(&s->link);
			nbd_slot_release(s);
			break;
		case SLOT_RECV:
			nbd_slot_release(s);
			break;
		case SLOT_FREE:
		case SLOT_BUSY:
			break;
		}
	}
	c->stalled = false;
	nbd_conn_kick(c);
}
