/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD export: see include/blkstack/nbd-server.h, and the NBD protocol
 * document (doc/proto.md of the NetworkBlockDevice/nbd project) for the
 * wire format.
 *
 * Shape of the code:
 *
 *   - One struct nbd_conn per client.  It owns an input buffer (the
 *     handshake, request headers and small payloads are parsed from it),
 *     an output buffer for handshake replies, and max_in_flight slots.
 *   - A slot carries one transmission request from its header to the
 *     last byte of its reply: its struct bks_req (from the connection's
 *     pool), its data buffer (4096-aligned for O_DIRECT, grown once to the
 *     largest size seen and reused), and its encoded reply header.  When
 *     every slot is in use the connection stops reading its socket: that
 *     is the per-connection in-flight limit.
 *   - Memory is bounded per connection and for the server (the budgets in
 *     nbd-server.h): a request whose buffer would pass a budget waits,
 *     with the connection not reading, until buffers come back -- its
 *     own (a slot released) or anyone's (the server's "budget" list of
 *     waiting connections, kicked when a slot is released).  Idle cached
 *     buffers are freed to make room, ours first.  A connection with more
 *     than BKS_NBD_CONN_OUT_HIGH bytes of replies queued reads no request.
 *   - Connection limits: the handshake deadline and the stall check share
 *     the connection's timer; a full table evicts an idle connection
 *     (srv_make_room() and evict_before() say which, and why).
 *   - Requests the chain cannot take as they are (offsets or lengths not
 *     multiples of its block size) are turned into aligned ones: reads
 *     are widened, trims shrunk, and writes and write-zeroes done by
 *     read-modify-write of the partial blocks.  A read-modify-write owns
 *     its blocks: it starts only when no other write of any client
 *     overlaps them, and writes overlapping it wait (the server-wide
 *     "active" and "wait" lists).
 *   - Replies are queued per connection in completion order (matched by
 *     cookie, as the protocol allows) and written with non-blocking
 *     sendmsg(); EPOLLOUT is watched only while output is pending.
 *   - Completions can arrive inside bks_chain_submit() (ram:, error:), so
 *     nothing that completes a request closes or frees a connection:
 *     that is done from the connection's deferred call, at the top of the
 *     loop.  A connection whose client vanished stays allocated until its
 *     last request in the chain completes (into nothing).
 *
 * Every client is untrusted: every length is checked before it is used,
 * and a client that breaks the protocol is disconnected alone.
 */
#include <errno.h>
#include <fcntl.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "blkstack/nbd-proto.h"
#include "blkstack/nbd-server.h"

/* Defaults and limits of struct bks_nbd_config. */
#define NBD_DEFAULT_MAX_CONNECTIONS 16u
#define NBD_DEFAULT_MAX_IN_FLIGHT   64u
#define NBD_MAX_IN_FLIGHT_LIMIT	    1024u
/* Longest export name or description we serve (the protocol's limit). */
#define NBD_STRING_MAX 4096u
/* Longest option data read; longer options get NBD_REP_ERR_TOO_BIG. */
#define NBD_OPT_MAX (64u << 10)
/* The input buffer holds a whole option, so that it parses in place. */
#define NBD_INBUF_SIZE (NBD_OPTION_HDR_SIZE + NBD_OPT_MAX)
/* Payloads at least this long are read straight into the slot buffer. */
#define NBD_DIRECT_READ_MIN (64u << 10)
/* Data buffers: aligned for O_DIRECT, sized in steps of this. */
#define NBD_BUF_ALIGN 4096u
#define NBD_BUF_STEP  (64u << 10)
/* Descriptors in one NBD_CMD_BLOCK_STATUS reply. */
#define NBD_MAX_EXTENTS 64u
/* Longest message in a structured error reply. */
#define NBD_ERRMSG_MAX 96u
/* The largest reply header a slot encodes (block status is the largest). */
#define NBD_REPLY_MAX (NBD_STRUCTURED_HDR_SIZE + 4 + 8 * NBD_MAX_EXTENTS)
/* Iovecs per sendmsg(). */
#define NBD_SEND_IOV 64
/* recv() calls per readable event, so that one client cannot starve. */
#define NBD_READS_PER_EVENT 16
/* accept() calls per readable event of the listening socket. */
#define NBD_ACCEPTS_PER_EVENT 16
/* The context id of base:allocation (any non-zero value will do). */
#define NBD_CTX_BASE_ALLOCATION 1u
static const char nbd_base_allocation[] = "base:allocation";

#define NS_PER_SEC 1000000000ull
#define NS_PER_MS  1000000ull
/* Shutdown waits this long for clients to take their replies. */
#define NBD_SHUTDOWN_TIMEOUT_NS (10 * NS_PER_SEC)
/*
 * A client with replies waiting that has taken no byte of them for this
 * long may be evicted for a newcomer (see conn_not_reading()).
 */
#define NBD_STUCK_EVICT_NS (2 * NS_PER_SEC)
/*
 * Most connections of one process (SO_PEERCRED); its next evicts one of
 * its own (srv_make_room()).  Half the default table, and twice what a
 * multi-conn client (nbdfuse: 4) opens.
 */
#define NBD_PER_PROCESS_MAX 8u
/* After accept() ran out of file descriptors or memory, wait this long. */
#define NBD_ACCEPT_RETRY_NS (100 * 1000000ull)

/* ---- intrusive lists ----------------------------------------------------- */

struct nbd_link {
	struct nbd_link *prev, *next;
};

static void link_init(struct nbd_link *l)
{
	l->prev = l->next = l;
}

static bool link_empty(const struct nbd_link *head)
{
	return head->next == head;
}

static void link_add_tail(struct nbd_link *head, struct nbd_link *l)
{
	l->prev = head->prev;
	l->next = head;
	head->prev->next = l;
	head->prev = l;
}

static void link_add_head(struct nbd_link *head, struct nbd_link *l)
{
	l->next = head->next;
	l->prev = head;
	head->next->prev = l;
	head->next = l;
}

/* Unlink l; it is left pointing at itself, so a second del is harmless. */
static void link_del(struct nbd_link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	link_init(l);
}

#define link_entry(ptr, type, member)                                          \
	((type *)(void *)((char *)(ptr)-offsetof(type, member)))

/* ---- state --------------------------------------------------------------- */

enum slot_state {
	SLOT_FREE,  /* on the connection's free list */
	SLOT_RECV,  /* receiving a write payload (the connection's rx) */
	SLOT_HELD,  /* on the server's held list (bks_nbd_server_hold) */
	SLOT_WAIT,  /* on the server's wait list (overlaps a write) */
	SLOT_BUSY,  /* in the chain */
	SLOT_REPLY, /* on the connection's output queue */
};

/* One chain request of a slot's plan. */
enum step {
	STEP_READ,	 /* [a, b) into buf */
	STEP_WRITE,	 /* [a, b) from buf (merged first if rmw) */
	STEP_READ_HEAD,	 /* the first block of [a, b) into scratch */
	STEP_READ_TAIL,	 /* the last block of [a, b) into scratch + bs */
	STEP_WRITE_HEAD, /* scratch back (zeroes merged first) */
	STEP_WRITE_TAIL, /* scratch + bs back */
	STEP_ZERO,	 /* write_zeroes of the aligned inside */
	STEP_DISCARD,	 /* discard [a, b) */
	STEP_FLUSH,
};

#define NBD_MAX_STEPS 5

struct nbd_conn;

struct nbd_slot {
	struct nbd_conn *conn;
	enum slot_state state;
	struct nbd_link link;  /* the connection's free list or output queue */
	struct nbd_link qlink; /* the server's held or wait list */
	struct nbd_link alink; /* the server's active list (writes) */
	bool active;

	/* The request, as the client sent it. */
	uint16_t cmd, flags;
	uint64_t cookie, offset;
	uint32_t len;

	/*
	 * What the chain sees: [a, b) widened to whole blocks (read, write,
	 * write_zeroes) or shrunk to them (trim).  rmw: a write or
	 * write_zeroes with partial blocks, done by read-modify-write; it
	 * owns [a, b) against other writes while it runs.
	 */
	uint64_t a, b;
	bool rmw, merged;
	enum step plan[NBD_MAX_STEPS];
	unsigned int nsteps, step;
	uint32_t rx_done; /* write payload received so far */

	unsigned char *buf; /* data, 4096-aligned; grown, never shrunk */
	size_t bufsize;
	unsigned char *scratch; /* two blocks, for read-modify-write */
	struct bks_req *req;	/* while busy */
	struct iovec iov;

	/* The reply: rep[0, rep_len), then data[0, data_len). */
	unsigned char rep[NBD_REPLY_MAX];
	size_t rep_len;
	const unsigned char *data;
	size_t data_len;
	size_t sent;
};

enum conn_phase {
	PH_CLIENT_FLAGS, /* greeting sent, waiting for the client's flags */
	PH_OPTIONS,	 /* option haggling */
	PH_TRANSMISSION,
};

struct nbd_conn {
	struct bks_nbd_server *srv;
	struct nbd_link link; /* the server's connections */
	int fd;
	struct bks_watch watch;
	uint32_t events; /* what the watch asks for now */
	struct bks_defer defer;
	struct bks_timer timer; /* handshake deadline, then stall check */
	enum conn_phase phase;

	bool dead;	       /* socket closed; freed once busy is 0 */
	bool eof;	       /* the client closed its side */
	bool disc;	       /* NBD_CMD_DISC received */
	bool stalled;	       /* no slot or buffer for the next request */
	bool budget_wait;      /* stalled on the server's buffer budget */
	bool stall_armed;      /* the timer is the stall check */
	struct nbd_link blink; /* the server's budget list, while so */
	pid_t peer_pid;	       /* SO_PEERCRED at accept, 0 if unknown */
	uint64_t seq;	       /* accept order: seniority */
	uint64_t progress_ns;  /* last byte in or out, or start of a wait */
	uint64_t nrequests;    /* transmission requests received */
	size_t out_bytes;      /* reply bytes queued, not yet sent */
	bool close_after_send; /* NBD_OPT_ABORT answered */
	bool no_zeroes, structured, meta;
	uint16_t tflags;

	/* Input: [inoff, inlen) of inbuf is received and not parsed yet. */
	unsigned char *inbuf;
	size_t inoff, inlen;
	uint64_t skip;	     /* input bytes to discard */
	struct nbd_slot *rx; /* receiving a write payload */

	/* Handshake output: [outoff, outlen) of outbuf is still to send. */
	unsigned char *outbuf;
	size_t outoff, outlen, outcap;

	struct nbd_slot *slots;
	unsigned int nslots, nused, busy;
	struct nbd_link free;
	struct nbd_link outq;
	struct bks_req_pool pool;
	size_t buf_total; /* bytes in slot buffers */
};

struct bks_nbd_server {
	struct bks_loop *loop;
	struct bks_chain *chain;
	const struct bks_info *info;
	int listen_fd;
	struct bks_watch lwatch;
	struct bks_timer accept_timer;
	struct bks_defer defer;

	char *name, *description;
	bool read_only;
	unsigned int max_connections, max_in_flight;
	uint32_t bs;	      /* the chain's block size */
	uint32_t max_payload; /* advertised maximum block size */
	uint64_t handshake_ns, stall_ns;

	struct nbd_link conns;
	unsigned int nopen;
	uint64_t seq;		/* of the last connection accepted */
	size_t buf_total;	/* data buffers of every connection */
	struct nbd_link budget; /* connections waiting for buffer budget */
	struct nbd_link held;	/* SLOT_HELD, arrival order */
	struct nbd_link wait;	/* SLOT_WAIT, arrival order */
	struct nbd_link active; /* busy writes, for overlap checks */
	unsigned int active_rmw;

	bool holding, quiesced_sent;
	void (*quiesced)(void *arg);
	void *quiesced_arg;

	bool stopping, done_sent;
	struct bks_timer stop_timer;
	void (*done)(void *arg);
	void *done_arg;

	struct bks_nbd_stats stats;
};

static void conn_close(struct nbd_conn *c);
static void slot_start(struct nbd_slot *s);
static void slot_run(struct nbd_slot *s);
static void slot_step(struct nbd_slot *s);

/* ---- small helpers ------------------------------------------------------- */

static uint64_t align_down(uint64_t v, uint32_t bs)
{
	return v & ~(uint64_t)(bs - 1);
}

static uint64_t align_up(uint64_t v, uint32_t bs)
{
	return align_down(v + bs - 1, bs);
}

/* The protocol's error value for a blkstack -errno. */
static uint32_t nbd_error(int rc)
{
	switch (-rc) {
	case EPERM:
	case EROFS: /* the protocol has no EROFS; EPERM is its read-only */
		return NBD_EPERM;
	case EIO:
		return NBD_EIO;
	case ENOMEM:
		return NBD_ENOMEM;
	case EINVAL:
		return NBD_EINVAL;
	case ENOSPC:
	case EDQUOT: /* the protocol asks for ENOSPC for these two */
	case EFBIG:
		return NBD_ENOSPC;
	case EOVERFLOW:
		return NBD_EOVERFLOW;
	case EOPNOTSUPP: /* == ENOTSUP on Linux */
		return NBD_ENOTSUP;
	case ESHUTDOWN:
		return NBD_ESHUTDOWN;
	default:
		return NBD_EIO;
	}
}

/* A -errno for an error value of the protocol (for messages). */
static int nbd_error_errno(uint32_t err)
{
	switch (err) {
	case NBD_EPERM:
		return -EPERM;
	case NBD_ENOMEM:
		return -ENOMEM;
	case NBD_EINVAL:
		return -EINVAL;
	case NBD_ENOSPC:
		return -ENOSPC;
	case NBD_EOVERFLOW:
		return -EOVERFLOW;
	case NBD_ENOTSUP:
		return -ENOTSUP;
	case NBD_ESHUTDOWN:
		return -ESHUTDOWN;
	default:
		return -EIO;
	}
}

static const char *cmd_name(uint16_t cmd)
{
	switch (cmd) {
	case NBD_CMD_READ:
		return "read";
	case NBD_CMD_WRITE:
		return "write";
	case NBD_CMD_FLUSH:
		return "flush";
	case NBD_CMD_TRIM:
		return "trim";
	case NBD_CMD_WRITE_ZEROES:
		return "write-zeroes";
	case NBD_CMD_BLOCK_STATUS:
		return "block-status";
	default:
		return "command";
	}
}

static bool cmd_writes(uint16_t cmd)
{
	return cmd == NBD_CMD_WRITE || cmd == NBD_CMD_TRIM ||
	       cmd == NBD_CMD_WRITE_ZEROES;
}

/* Read-only: configured so, or the chain is (or cannot write at all). */
static bool srv_read_only(const struct bks_nbd_server *srv)
{
	return srv->read_only || srv->info->read_only ||
	       !(srv->info->ops & BKS_OPF(BKS_OP_WRITE));
}

/* The transmission flags, true to the chain (and to the negotiation). */
static uint16_t transmission_flags(const struct nbd_conn *c)
{
	const struct bks_nbd_server *srv = c->srv;
	const struct bks_info *info = srv->info;
	bool ro = srv_read_only(srv);
	uint16_t f = NBD_FLAG_HAS_FLAGS;

	if (ro)
		f |= NBD_FLAG_READ_ONLY;
	if (info->ops & BKS_OPF(BKS_OP_FLUSH))
		f |= NBD_FLAG_SEND_FLUSH;
	if (!ro && info->can_fua && (info->ops & BKS_OPF(BKS_OP_WRITE)))
		f |= NBD_FLAG_SEND_FUA;
	if (!ro && (info->ops & BKS_OPF(BKS_OP_DISCARD)))
		f |= NBD_FLAG_SEND_TRIM;
	if (!ro && (info->ops & BKS_OPF(BKS_OP_WRITE_ZEROES)))
		f |= NBD_FLAG_SEND_WRITE_ZEROES;
	/*
	 * Every connection goes to the same chain, whose flush covers all
	 * completed writes whoever sent them: multi-conn is safe.
	 */
	f |= NBD_FLAG_CAN_MULTI_CONN;
	/* A read is always one chunk, so "don't fragment" costs nothing. */
	if (c->structured)
		f |= NBD_FLAG_SEND_DF;
	return f;
}

/* ---- slots --------------------------------------------------------------- */

/* Schedule the connection's deferred call (output, parsing, closing). */
static void conn_kick(struct nbd_conn *c)
{
	bks_defer_schedule(&c->defer);
}

static void srv_kick(struct bks_nbd_server *srv)
{
	bks_defer_schedule(&srv->defer);
}

/* Put s back on its connection's free list; it keeps its buffers. */
static void slot_release(struct nbd_slot *s)
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
		conn_kick(c);
	}
	/* Its buffer may be freed now: connections waiting for budget. */
	if (!link_empty(&c->srv->budget))
		srv_kick(c->srv);
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
static struct nbd_slot *slot_get(struct nbd_conn *c, size_t need, uint32_t *err)
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

/* Queue s's reply on its connection. */
static void slot_queue_reply(struct nbd_slot *s)
{
	struct nbd_conn *c = s->conn;

	s->state = SLOT_REPLY;
	s->sent = 0;
	/* The stall check counts from the start of a wait to send. */
	if (c->out_bytes == 0)
		c->progress_ns = bks_now_ns();
	c->out_bytes += s->rep_len + s->data_len;
	link_add_tail(&c->outq, &s->link);
	conn_kick(c);
}

/*
 * Encode an error reply for s: a structured error chunk (with a message
 * for humans) when structured replies were negotiated, else a simple
 * reply.  rc is the -errno behind it, for the message.
 */
static void slot_reply_error(struct nbd_slot *s, uint32_t err, int rc)
{
	struct nbd_conn *c = s->conn;
	unsigned char *p = s->rep;
	char msg[NBD_ERRMSG_MAX];
	int n;

	c->srv->stats.errors++;
	s->data = NULL;
	s->data_len = 0;
	if (!c->structured) {
		p = bks_put_be32(p, NBD_SIMPLE_REPLY_MAGIC);
		p = bks_put_be32(p, err);
		p = bks_put_be64(p, s->cookie);
		s->rep_len = (size_t)(p - s->rep);
		slot_queue_reply(s);
		return;
	}
	n = snprintf(msg, sizeof(msg), "%s: %s", cmd_name(s->cmd),
		     strerror(rc < 0 ? -rc : EIO));
	if (n < 0)
		n = 0;
	if ((size_t)n >= sizeof(msg))
		n = sizeof(msg) - 1;
	p = bks_put_be32(p, NBD_STRUCTURED_REPLY_MAGIC);
	p = bks_put_be16(p, NBD_REPLY_FLAG_DONE);
	p = bks_put_be16(p, NBD_REPLY_TYPE_ERROR);
	p = bks_put_be64(p, s->cookie);
	p = bks_put_be32(p, 4 + 2 + (uint32_t)n);
	p = bks_put_be32(p, err);
	p = bks_put_be16(p, (uint16_t)n);
	memcpy(p, msg, (size_t)n);
	s->rep_len = (size_t)(p - s->rep) + (size_t)n;
	slot_queue_reply(s);
}

/* Encode the successful reply of s (block status encodes its own). */
static void slot_reply_ok(struct nbd_slot *s)
{
	struct nbd_conn *c = s->conn;
	unsigned char *p = s->rep;

	s->data = NULL;
	s->data_len = 0;
	if (s->cmd == NBD_CMD_READ) {
		s->data = s->buf + (s->offset - s->a);
		s->data_len = s->len;
	}
	if (s->cmd == NBD_CMD_READ && c->structured) {
		/* One chunk: that honours NBD_CMD_FLAG_DF as well. */
		p = bks_put_be32(p, NBD_STRUCTURED_REPLY_MAGIC);
		p = bks_put_be16(p, NBD_REPLY_FLAG_DONE);
		p = bks_put_be16(p, NBD_REPLY_TYPE_OFFSET_DATA);
		p = bks_put_be64(p, s->cookie);
		p = bks_put_be32(p, 8 + s->len);
		p = bks_put_be64(p, s->offset);
	} else {
		/* Simple replies are allowed for all but structured reads. */
		p = bks_put_be32(p, NBD_SIMPLE_REPLY_MAGIC);
		p = bks_put_be32(p, 0);
		p = bks_put_be64(p, s->cookie);
	}
	s->rep_len = (size_t)(p - s->rep);
	slot_queue_reply(s);
}

/* ---- overlap of writes --------------------------------------------------- */

static bool overlaps(const struct nbd_slot *x, const struct nbd_slot *y)
{
	return x->a < y->b && y->a < x->b && (x->rmw || y->rmw);
}

/*
 * Must write s wait?  Yes if it overlaps a write in the chain where one of
 * the two is a read-modify-write (which would lose the other's data), or
 * an earlier waiter it overlaps likewise (writes stay in arrival order).
 */
static bool slot_blocked(const struct bks_nbd_server *srv,
			 const struct nbd_slot *s)
{
	const struct nbd_link *l;

	if (srv->active_rmw == 0 && !s->rmw && link_empty(&srv->wait))
		return false;
	for (l = srv->active.next; l != &srv->active; l = l->next) {
		if (overlaps(s, link_entry(l, struct nbd_slot, alink)))
			return true;
	}
	for (l = srv->wait.next; l != &srv->wait; l = l->next) {
		const struct nbd_slot *w =
		    link_entry(l, struct nbd_slot, qlink);

		if (w == s)
			break;
		if (overlaps(s, w))
			return true;
	}
	return false;
}

/* Start the waiters that no longer overlap anything, in order. */
static void srv_start_waiters(struct bks_nbd_server *srv)
{
	struct nbd_link *l, *next;

	for (l = srv->wait.next; l != &srv->wait; l = next) {
		struct nbd_slot *s = link_entry(l, struct nbd_slot, qlink);

		next = l->next;
		if (slot_blocked(srv, s))
			continue;
		/*
		 * Run, not slot_start(): that would see the later waiters
		 * as earlier ones.  A completion inside never touches the
		 * wait list (it only kicks the server): next stays valid.
		 */
		link_del(&s->qlink);
		slot_run(s);
	}
}

/* ---- running requests ---------------------------------------------------- */

/* s has finished in the chain with result (0 or -errno). */
static void slot_finish(struct nbd_slot *s, int result)
{
	struct nbd_conn *c = s->conn;
	struct bks_nbd_server *srv = c->srv;

	if (s->req) {
		bks_req_put(&c->pool, s->req);
		s->req = NULL;
	}
	if (s->state == SLOT_BUSY) {
		srv->stats.in_flight--;
		c->busy--;
	}
	if (s->active) {
		link_del(&s->alink);
		s->active = false;
		if (s->rmw)
			srv->active_rmw--;
		if (!link_empty(&srv->wait))
			srv_kick(srv);
	}
	if (srv->holding && srv->stats.in_flight == 0)
		srv_kick(srv); /* quiesced */
	if (c->dead) {
		/* The client is gone: complete into nothing. */
		slot_release(s);
		conn_kick(c);
		return;
	}
	if (result < 0) {
		slot_reply_error(s, nbd_error(result), result);
		return;
	}
	if (s->cmd == NBD_CMD_READ)
		srv->stats.bytes_read += s->len;
	else if (s->cmd == NBD_CMD_WRITE)
		srv->stats.bytes_written += s->len;
	slot_reply_ok(s);
}

/* The second block of a slot's scratch, aligned like the first. */
static unsigned char *slot_tail_block(const struct nbd_slot *s, uint32_t bs)
{
	return s->scratch + align_up(bs, NBD_BUF_ALIGN);
}

/*
 * Read-modify-write: the partial blocks have been read into scratch; put
 * the client's bytes together with them.  A write keeps the old bytes
 * around its payload in buf; write-zeroes clears its bytes in scratch.
 */
static void slot_merge(struct nbd_slot *s)
{
	uint32_t bs = s->conn->srv->bs;
	uint64_t end = s->offset + s->len;
	bool head = s->offset != s->a, tail = end != s->b;
	bool same = s->b - s->a == bs; /* one block holds both ends */
	const unsigned char *tb = same ? s->scratch : slot_tail_block(s, bs);
	uint64_t tb_off = s->b - bs;

	s->merged = true;
	if (s->cmd == NBD_CMD_WRITE) {
		if (head)
			memcpy(s->buf, s->scratch, s->offset - s->a);
		if (tail)
			memcpy(s->buf + (end - s->a), tb + (end - tb_off),
			       s->b - end);
		return;
	}
	if (same) {
		memset(s->scratch + (s->offset - s->a), 0, s->len);
		return;
	}
	if (head)
		memset(s->scratch + (s->offset - s->a), 0,
		       bs - (s->offset - s->a));
	if (tail)
		memset(slot_tail_block(s, bs), 0, end - tb_off);
}

static void slot_req_done(struct bks_req *req, int result)
{
	struct nbd_slot *s = req->opaque;

	if (result < 0) {
		slot_finish(s, result);
		return;
	}
	s->step++;
	slot_step(s);
}

/* Submit the current step of s's plan, or finish s after the last. */
static void slot_step(struct nbd_slot *s)
{
	struct bks_nbd_server *srv = s->conn->srv;
	struct bks_req *req = s->req;
	uint32_t bs = srv->bs;
	uint32_t fua = s->flags & NBD_CMD_FLAG_FUA ? BKS_REQ_FUA : 0;
	bool head = s->offset != s->a, tail = s->offset + s->len != s->b;
	enum step st;

	if (s->step == s->nsteps) {
		slot_finish(s, 0);
		return;
	}
	st = s->plan[s->step];
	if (s->rmw && !s->merged && st != STEP_READ_HEAD &&
	    st != STEP_READ_TAIL)
		slot_merge(s);
	req->flags = 0;
	req->iov = NULL;
	req->iovcnt = 0;
	req->offset = s->a;
	req->len = s->b - s->a;
	s->iov.iov_base = s->buf;
	s->iov.iov_len = s->b - s->a;
	switch (st) {
	case STEP_READ:
		req->op = BKS_OP_READ;
		break;
	case STEP_WRITE:
		req->op = BKS_OP_WRITE;
		req->flags = fua;
		break;
	case STEP_READ_HEAD:
	case STEP_WRITE_HEAD:
		req->op = st == STEP_READ_HEAD ? BKS_OP_READ : BKS_OP_WRITE;
		req->flags = st == STEP_WRITE_HEAD ? fua : 0;
		req->len = bs;
		s->iov.iov_base = s->scratch;
		s->iov.iov_len = bs;
		break;
	case STEP_READ_TAIL:
	case STEP_WRITE_TAIL:
		req->op = st == STEP_READ_TAIL ? BKS_OP_READ : BKS_OP_WRITE;
		req->flags = st == STEP_WRITE_TAIL ? fua : 0;
		req->offset = s->b - bs;
		req->len = bs;
		s->iov.iov_base = slot_tail_block(s, bs);
		s->iov.iov_len = bs;
		break;
	case STEP_ZERO:
		/* The whole blocks; partial ones were written from scratch. */
		req->op = BKS_OP_WRITE_ZEROES;
		req->flags = fua;
		if (s->flags & NBD_CMD_FLAG_NO_HOLE)
			req->flags |= BKS_REQ_NO_HOLE;
		req->offset = s->rmw && head ? s->a + bs : s->a;
		req->len = (s->rmw && tail ? s->b - bs : s->b) - req->offset;
		break;
	case STEP_DISCARD:
		req->op = BKS_OP_DISCARD;
		break;
	case STEP_FLUSH:
		req->op = BKS_OP_FLUSH;
		req->offset = req->len = 0;
		break;
	}
	if (req->op == BKS_OP_READ || req->op == BKS_OP_WRITE) {
		req->iov = &s->iov;
		req->iovcnt = 1;
	}
	req->done = slot_req_done;
	req->opaque = s;
	bks_chain_submit(srv->chain, req);
}

/* Answer NBD_CMD_BLOCK_STATUS for base:allocation, synchronously. */
static void slot_block_status(struct nbd_slot *s)
{
	struct bks_nbd_server *srv = s->conn->srv;
	struct bks_extent ext[NBD_MAX_EXTENTS];
	size_t max = s->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : NBD_MAX_EXTENTS;
	unsigned char *p = s->rep + NBD_STRUCTURED_HDR_SIZE + 4;
	unsigned char *last = NULL;
	uint64_t total = 0;
	uint32_t nd = 0;
	size_t n = 0;
	int rc;

	rc = bks_chain_extents(srv->chain, s->offset, s->len, ext, max, &n);
	if (rc < 0) {
		slot_reply_error(s, nbd_error(rc), rc);
		return;
	}
	for (size_t i = 0; i < n && total < s->len; i++) {
		uint64_t l = ext[i].length;
		uint32_t st = 0;

		if (l == 0)
			break;
		if (l > s->len - total)
			l = s->len - total;
		if (ext[i].flags & BKS_EXTENT_HOLE)
			st |= NBD_STATE_HOLE;
		if (ext[i].flags & BKS_EXTENT_ZERO)
			st |= NBD_STATE_ZERO;
		total += l;
		/* Neighbours with the same status are one descriptor. */
		if (last && bks_get_be32(last + 4) == st) {
			bks_put_be32(last, bks_get_be32(last) + (uint32_t)l);
			continue;
		}
		last = p;
		p = bks_put_be32(p, (uint32_t)l);
		p = bks_put_be32(p, st);
		nd++;
	}
	if (nd == 0) {
		/* The chain vouches for at least one extent: a driver bug. */
		slot_reply_error(s, NBD_EIO, -EIO);
		return;
	}
	p = s->rep;
	p = bks_put_be32(p, NBD_STRUCTURED_REPLY_MAGIC);
	p = bks_put_be16(p, NBD_REPLY_FLAG_DONE);
	p = bks_put_be16(p, NBD_REPLY_TYPE_BLOCK_STATUS);
	p = bks_put_be64(p, s->cookie);
	p = bks_put_be32(p, 4 + 8 * nd);
	bks_put_be32(p, NBD_CTX_BASE_ALLOCATION);
	s->rep_len = NBD_STRUCTURED_HDR_SIZE + 4 + 8 * nd;
	s->data = NULL;
	s->data_len = 0;
	slot_queue_reply(s);
}

/* Submit s to the chain now (it is not blocked). */
static void slot_run(struct nbd_slot *s)
{
	struct nbd_conn *c = s->conn;
	struct bks_nbd_server *srv = c->srv;

	if (cmd_writes(s->cmd)) {
		link_add_tail(&srv->active, &s->alink);
		s->active = true;
		if (s->rmw)
			srv->active_rmw++;
	}
	/* The pool has one request per slot: this never fails. */
	s->req = bks_req_get(&c->pool);
	s->state = SLOT_BUSY;
	srv->stats.in_flight++;
	c->busy++;
	s->step = 0;
	s->merged = false;
	slot_step(s);
}

/* Start s: answer it at once, make it wait behind a write, or run it. */
static void slot_start(struct nbd_slot *s)
{
	struct bks_nbd_server *srv = s->conn->srv;

	if (s->cmd == NBD_CMD_BLOCK_STATUS) {
		slot_block_status(s);
		return;
	}
	if (s->nsteps == 0) {
		/* A trim of less than a block: a hint we may ignore. */
		slot_reply_ok(s);
		return;
	}
	if (cmd_writes(s->cmd) && slot_blocked(srv, s)) {
		s->state = SLOT_WAIT;
		link_add_tail(&srv->wait, &s->qlink);
		return;
	}
	slot_run(s);
}

/* A request has arrived whole: hold it, or start it. */
static void slot_dispatch(struct nbd_slot *s)
{
	struct bks_nbd_server *srv = s->conn->srv;

	if (srv->stopping) {
		slot_reply_error(s, NBD_ESHUTDOWN, -ESHUTDOWN);
		return;
	}
	if (srv->holding) {
		s->state = SLOT_HELD;
		link_add_tail(&srv->held, &s->qlink);
		srv->stats.held++;
		srv->stats.holding++;
		return;
	}
	slot_start(s);
}

/*
 * Work out what the chain must do for s (see struct nbd_slot).  Returns 0
 * or an NBD error value.
 */
static uint32_t slot_plan(struct nbd_slot *s)
{
	const struct bks_nbd_server *srv = s->conn->srv;
	uint32_t bs = srv->bs;
	uint64_t end = s->offset + s->len;
	bool head, tail, same;
	void *p;

	s->nsteps = 0;
	s->rmw = false;
	s->a = align_down(s->offset, bs);
	s->b = align_up(end, bs);
	switch (s->cmd) {
	case NBD_CMD_READ:
		/* Widened to whole blocks; the reply skips the extra. */
		s->plan[s->nsteps++] = STEP_READ;
		return 0;
	case NBD_CMD_FLUSH:
		s->a = s->b = 0;
		s->plan[s->nsteps++] = STEP_FLUSH;
		return 0;
	case NBD_CMD_TRIM:
		/* A hint: only the whole blocks inside are discarded. */
		s->a = align_up(s->offset, bs);
		s->b = align_down(end, bs);
		if (s->a >= s->b)
			return 0;
		s->plan[s->nsteps++] = STEP_DISCARD;
		/* FUA: the discard is durable when we reply. */
		if ((s->flags & NBD_CMD_FLAG_FUA) &&
		    (srv->info->ops & BKS_OPF(BKS_OP_FLUSH)))
			s->plan[s->nsteps++] = STEP_FLUSH;
		return 0;
	case NBD_CMD_WRITE:
	case NBD_CMD_WRITE_ZEROES:
		break;
	default:
		return 0; /* block status: no plan */
	}
	head = s->offset != s->a;
	tail = end != s->b;
	s->rmw = head || tail;
	if (!s->rmw) {
		s->plan[s->nsteps++] =
		    s->cmd == NBD_CMD_WRITE ? STEP_WRITE : STEP_ZERO;
		return 0;
	}
	if (!s->scratch) {
		if (posix_memalign(&p, NBD_BUF_ALIGN,
				   2 * align_up(bs, NBD_BUF_ALIGN)) != 0)
			return NBD_ENOMEM;
		s->scratch = p;
	}
	same = s->b - s->a == bs;
	if (head || same)
		s->plan[s->nsteps++] = STEP_READ_HEAD;
	if (tail && !same)
		s->plan[s->nsteps++] = STEP_READ_TAIL;
	if (s->cmd == NBD_CMD_WRITE) {
		s->plan[s->nsteps++] = STEP_WRITE;
		return 0;
	}
	if (head || same)
		s->plan[s->nsteps++] = STEP_WRITE_HEAD;
	if (tail && !same)
		s->plan[s->nsteps++] = STEP_WRITE_TAIL;
	if (!same && (head ? s->a + bs : s->a) < (tail ? s->b - bs : s->b))
		s->plan[s->nsteps++] = STEP_ZERO;
	return 0;
}

/* ---- handshake output ---------------------------------------------------- */

static bool conn_output_pending(const struct nbd_conn *c)
{
	return c->outoff < c->outlen || !link_empty(&c->outq);
}

/*
 * Room for n more bytes of handshake output; returns where they go, or
 * NULL when memory ran out.  The handshake answers one option at a time,
 * so this stays small.
 */
static unsigned char *out_reserve(struct nbd_conn *c, size_t n)
{
	unsigned char *p;
	size_t cap;

	if (c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
	if (c->outcap - c->outlen < n) {
		cap = c->outlen + n + 1024;
		p = realloc(c->outbuf, cap);
		if (!p)
			return NULL;
		c->outbuf = p;
		c->outcap = cap;
	}
	p = c->outbuf + c->outlen;
	c->outlen += n;
	conn_kick(c);
	return p;
}

/*
 * Start an option reply with a payload of len bytes; returns where the
 * payload goes, or NULL when memory ran out.
 */
static unsigned char *opt_reply(struct nbd_conn *c, uint32_t opt, uint32_t type,
				uint32_t len)
{
	unsigned char *p = out_reserve(c, NBD_OPTION_REPLY_HDR_SIZE + len);

	if (!p)
		return NULL;
	p = bks_put_be64(p, NBD_REP_MAGIC);
	p = bks_put_be32(p, opt);
	p = bks_put_be32(p, type);
	return bks_put_be32(p, len);
}

/* ---- connections --------------------------------------------------------- */

/* Can c take more input now (parse what is buffered)? */
static bool conn_can_parse(const struct nbd_conn *c)
{
	return !c->dead && !c->disc && !c->stalled && !c->close_after_send &&
	       !c->srv->stopping;
}

/*
 * Too many replies wait for c (the client does not read them): take no
 * new request until they have gone down (back-pressure).
 */
static bool conn_backlogged(const struct nbd_conn *c)
{
	return c->phase == PH_TRANSMISSION &&
	       c->out_bytes >= BKS_NBD_CONN_OUT_HIGH;
}

/* Should c read its socket now? */
static bool conn_can_read(const struct nbd_conn *c)
{
	if (!conn_can_parse(c) || c->eof)
		return false;
	/* A payload under way is still received: it is not a new request. */
	if (conn_backlogged(c) && !c->rx && !c->skip)
		return false;
	/* Option haggling is one reply at a time: no need to read ahead. */
	return c->phase != PH_OPTIONS || c->outoff == c->outlen;
}

/*
 * Results of the parsing functions: PARSE_OK (0) goes on with the next
 * message; the others stop conn_parse() (see there).
 */
enum {
	PARSE_OK,
	PARSE_MORE,
	PARSE_STALL,
	PARSE_STOP,
};

/* Disconnect c for breaking the protocol.  Returns PARSE_STOP. */
static int conn_drop(struct nbd_conn *c)
{
	c->srv->stats.dropped++;
	conn_close(c);
	return PARSE_STOP;
}

/*
 * Close c's socket.  Requests not in the chain are forgotten; those in
 * it complete into nothing, and c is freed (by its deferred call) when
 * the last one has.
 */
static void conn_close(struct nbd_conn *c)
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
		case SLOT_HELD:
			srv->stats.holding--;
			link_del(&s->qlink);
			slot_release(s);
			break;
		case SLOT_WAIT:
			link_del(&s->qlink);
			slot_release(s);
			srv_kick(srv); /* later waiters may go now */
			break;
		case SLOT_REPLY:
			link_del(&s->link);
			slot_release(s);
			break;
		case SLOT_RECV:
			slot_release(s);
			break;
		case SLOT_FREE:
		case SLOT_BUSY:
			break;
		}
	}
	c->stalled = false;
	conn_kick(c);
}

static void conn_free(struct nbd_conn *c)
{
	struct bks_nbd_server *srv = c->srv;

	conn_close(c); /* if not closed yet */
	link_del(&c->link);
	bks_defer_cancel(&c->defer);
	bks_timer_cancel(&c->timer);
	for (unsigned int i = 0; i < c->nslots; i++) {
		free(c->slots[i].buf);
		free(c->slots[i].scratch);
	}
	srv->buf_total -= c->buf_total;
	srv->stats.buffer_bytes = srv->buf_total;
	free(c->slots);
	bks_req_pool_free(&c->pool);
	free(c->inbuf);
	free(c->outbuf);
	free(c);
	if (srv->stopping)
		srv_kick(srv); /* the last connection ends the shutdown */
}

/* The client has closed its side: finish what it sent, then close. */
static void conn_eof(struct nbd_conn *c)
{
	c->eof = true;
	if (c->rx) {
		/* Disconnected in the middle of a write payload. */
		struct nbd_slot *s = c->rx;

		c->rx = NULL;
		slot_release(s);
	}
}

static void conn_enter_transmission(struct nbd_conn *c)
{
	c->phase = PH_TRANSMISSION;
	c->tflags = transmission_flags(c);
	bks_timer_cancel(&c->timer);
}

static bool export_name_matches(const struct bks_nbd_server *srv,
				const unsigned char *name, uint32_t len)
{
	return len == 0 ||
	       (len == strlen(srv->name) && memcmp(name, srv->name, len) == 0);
}

/* Queue an option error reply with a message. */
static int opt_error(struct nbd_conn *c, uint32_t opt, uint32_t type,
		     const char *msg)
{
	size_t n = strlen(msg);
	unsigned char *p = opt_reply(c, opt, type, (uint32_t)n);

	if (!p) {
		conn_close(c);
		return PARSE_STOP;
	}
	memcpy(p, msg, n);
	return 0;
}

static int opt_ack(struct nbd_conn *c, uint32_t opt)
{
	if (!opt_reply(c, opt, NBD_REP_ACK, 0)) {
		conn_close(c);
		return PARSE_STOP;
	}
	return 0;
}

/* NBD_OPT_EXPORT_NAME: enter transmission, or hang up (no error reply). */
static int opt_export_name(struct nbd_conn *c, const unsigned char *data,
			   uint32_t len)
{
	const struct bks_nbd_server *srv = c->srv;
	size_t n = 8 + 2 + (c->no_zeroes ? 0 : 124);
	unsigned char *p;

	if (!export_name_matches(srv, data, len))
		return conn_drop(c);
	conn_enter_transmission(c);
	p = out_reserve(c, n);
	if (!p) {
		conn_close(c);
		return PARSE_STOP;
	}
	memset(p, 0, n);
	p = bks_put_be64(p, srv->info->size);
	bks_put_be16(p, c->tflags);
	return 0;
}

/* NBD_OPT_INFO and NBD_OPT_GO. */
static int opt_info(struct nbd_conn *c, uint32_t opt, const unsigned char *data,
		    uint32_t len)
{
	const struct bks_nbd_server *srv = c->srv;
	bool want_name = false, want_desc = false;
	uint32_t namelen, nreq, pref, nlen, dlen;
	unsigned char *p;

	if (len < 6)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "short option");
	namelen = bks_get_be32(data);
	if (namelen > len - 6)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "bad name length");
	nreq = bks_get_be16(data + 4 + namelen);
	if (len != 4 + namelen + 2 + 2 * nreq)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "bad option length");
	if (!export_name_matches(srv, data + 4, namelen))
		return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "no such export");
	for (uint32_t i = 0; i < nreq; i++) {
		uint16_t t = bks_get_be16(data + 4 + namelen + 2 + 2 * i);

		want_name |= t == NBD_INFO_NAME;
		want_desc |= t == NBD_INFO_DESCRIPTION;
	}
	if (opt == NBD_OPT_GO)
		conn_enter_transmission(c);
	/* NBD_INFO_EXPORT always; the block sizes always (we have some). */
	p = opt_reply(c, opt, NBD_REP_INFO, 12);
	if (!p)
		goto oom;
	p = bks_put_be16(p, NBD_INFO_EXPORT);
	p = bks_put_be64(p, srv->info->size);
	bks_put_be16(p, opt == NBD_OPT_GO ? c->tflags : transmission_flags(c));
	if (want_name) {
		nlen = (uint32_t)strlen(srv->name);
		p = opt_reply(c, opt, NBD_REP_INFO, 2 + nlen);
		if (!p)
			goto oom;
		p = bks_put_be16(p, NBD_INFO_NAME);
		memcpy(p, srv->name, nlen);
	}
	if (want_desc && srv->description) {
		dlen = (uint32_t)strlen(srv->description);
		p = opt_reply(c, opt, NBD_REP_INFO, 2 + dlen);
		if (!p)
			goto oom;
		p = bks_put_be16(p, NBD_INFO_DESCRIPTION);
		memcpy(p, srv->description, dlen);
	}
	pref = srv->bs > 4096 ? srv->bs : 4096;
	if (pref > srv->max_payload)
		pref = srv->max_payload;
	p = opt_reply(c, opt, NBD_REP_INFO, 14);
	if (!p)
		goto oom;
	p = bks_put_be16(p, NBD_INFO_BLOCK_SIZE);
	p = bks_put_be32(p, srv->bs);
	p = bks_put_be32(p, pref);
	bks_put_be32(p, srv->max_payload);
	return opt_ack(c, opt);
oom:
	conn_close(c);
	return PARSE_STOP;
}

static bool query_is(const unsigned char *q, uint32_t len, const char *s)
{
	return len == strlen(s) && memcmp(q, s, len) == 0;
}

/*
 * NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: the only
 * context is base:allocation, and only if the chain knows holes.
 */
static int opt_meta(struct nbd_conn *c, uint32_t opt, const unsigned char *data,
		    uint32_t len)
{
	const struct bks_nbd_server *srv = c->srv;
	bool has = bks_chain_has_extents(srv->chain), match = false;
	uint32_t namelen, nq, pos, ql, n = sizeof(nbd_base_allocation) - 1;
	unsigned char *p;

	if (opt == NBD_OPT_SET_META_CONTEXT)
		c->meta = false; /* replaced, even by a failed SET */
	if (!c->structured)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "negotiate structured replies first");
	if (len < 8)
		return opt_error(c, opt, NBD_REP_ERR_INVALID, "short option");
	namelen = bks_get_be32(data);
	if (namelen > len - 8)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "bad name length");
	nq = bks_get_be32(data + 4 + namelen);
	pos = 8 + namelen;
	for (uint32_t i = 0; i < nq; i++) {
		const unsigned char *q;

		if (len - pos < 4)
			return opt_error(c, opt, NBD_REP_ERR_INVALID,
					 "bad query count");
		ql = bks_get_be32(data + pos);
		pos += 4;
		if (ql > len - pos)
			return opt_error(c, opt, NBD_REP_ERR_INVALID,
					 "bad query length");
		q = data + pos;
		pos += ql;
		if (query_is(q, ql, nbd_base_allocation) ||
		    (opt == NBD_OPT_LIST_META_CONTEXT &&
		     query_is(q, ql, "base:")))
			match = has;
	}
	if (pos != len)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "bad option length");
	if (!export_name_matches(srv, data + 4, namelen))
		return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "no such export");
	if (opt == NBD_OPT_LIST_META_CONTEXT && nq == 0)
		match = has; /* no query: list everything */
	if (match) {
		p = opt_reply(c, opt, NBD_REP_META_CONTEXT, 4 + n);
		if (!p) {
			conn_close(c);
			return PARSE_STOP;
		}
		/* A listing's ids are reserved: zero. */
		p = bks_put_be32(p, opt == NBD_OPT_SET_META_CONTEXT
					? NBD_CTX_BASE_ALLOCATION
					: 0);
		memcpy(p, nbd_base_allocation, n);
	}
	if (opt == NBD_OPT_SET_META_CONTEXT)
		c->meta = match;
	return opt_ack(c, opt);
}

/* NBD_OPT_LIST: our one export. */
static int opt_list(struct nbd_conn *c, uint32_t len)
{
	uint32_t n = (uint32_t)strlen(c->srv->name);
	unsigned char *p;

	if (len != 0)
		return opt_error(c, NBD_OPT_LIST, NBD_REP_ERR_INVALID,
				 "unexpected data");
	p = opt_reply(c, NBD_OPT_LIST, NBD_REP_SERVER, 4 + n);
	if (!p) {
		conn_close(c);
		return PARSE_STOP;
	}
	p = bks_put_be32(p, n);
	memcpy(p, c->srv->name, n);
	return opt_ack(c, NBD_OPT_LIST);
}

/* One option from the input buffer (its header is there). */
static int conn_option(struct nbd_conn *c)
{
	const unsigned char *h = c->inbuf + c->inoff;
	uint32_t opt = bks_get_be32(h + 8), len = bks_get_be32(h + 12);
	const unsigned char *data = h + NBD_OPTION_HDR_SIZE;

	if (bks_get_be64(h) != NBD_IHAVEOPT)
		return conn_drop(c);
	if (len > NBD_OPT_MAX) {
		/* NBD_OPT_EXPORT_NAME cannot be answered with an error. */
		if (opt == NBD_OPT_EXPORT_NAME)
			return conn_drop(c);
		c->inoff += NBD_OPTION_HDR_SIZE;
		c->skip = len;
		return opt_error(c, opt, NBD_REP_ERR_TOO_BIG,
				 "option too long");
	}
	if (c->inlen - c->inoff < NBD_OPTION_HDR_SIZE + len)
		return PARSE_MORE;
	/* data stays valid: the buffer moves only when we next read. */
	c->inoff += NBD_OPTION_HDR_SIZE + len;
	switch (opt) {
	case NBD_OPT_EXPORT_NAME:
		return opt_export_name(c, data, len);
	case NBD_OPT_ABORT:
		c->close_after_send = true;
		opt_ack(c, opt);
		return PARSE_STOP;
	case NBD_OPT_LIST:
		return opt_list(c, len);
	case NBD_OPT_STARTTLS:
		return opt_error(c, opt, NBD_REP_ERR_POLICY,
				 "TLS is not supported");
	case NBD_OPT_INFO:
	case NBD_OPT_GO:
		return opt_info(c, opt, data, len);
	case NBD_OPT_STRUCTURED_REPLY:
		if (len != 0)
			return opt_error(c, opt, NBD_REP_ERR_INVALID,
					 "unexpected data");
		c->structured = true;
		return opt_ack(c, opt);
	case NBD_OPT_LIST_META_CONTEXT:
	case NBD_OPT_SET_META_CONTEXT:
		return opt_meta(c, opt, data, len);
	default:
		return opt_error(c, opt, NBD_REP_ERR_UNSUP,
				 "unsupported option");
	}
}

/* The client's flags, after our greeting. */
static int conn_client_flags(struct nbd_conn *c)
{
	uint32_t f = bks_get_be32(c->inbuf + c->inoff);

	c->inoff += 4;
	/* Fixed newstyle is all we speak; unknown flags end the session. */
	if (!(f & NBD_FLAG_C_FIXED_NEWSTYLE) ||
	    (f & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)))
		return conn_drop(c);
	c->no_zeroes = f & NBD_FLAG_C_NO_ZEROES;
	c->phase = PH_OPTIONS;
	return 0;
}

/*
 * Is a transmission request acceptable?  Returns 0 or the NBD error to
 * answer it with.  The chain checks again; these are the checks whose
 * answer the protocol specifies, or that must happen before rounding.
 */
static uint32_t request_check(const struct nbd_conn *c, uint16_t type,
			      uint16_t flags, uint64_t offset, uint32_t len)
{
	const struct bks_nbd_server *srv = c->srv;
	uint16_t allowed = 0;

	if (c->tflags & NBD_FLAG_SEND_FUA)
		allowed |= NBD_CMD_FLAG_FUA; /* valid on every command */
	switch (type) {
	case NBD_CMD_READ:
		if (c->structured)
			allowed |= NBD_CMD_FLAG_DF;
		break;
	case NBD_CMD_WRITE:
		break;
	case NBD_CMD_FLUSH:
		if (!(c->tflags & NBD_FLAG_SEND_FLUSH))
			return NBD_EINVAL;
		break;
	case NBD_CMD_TRIM:
		if (!srv_read_only(srv) && !(c->tflags & NBD_FLAG_SEND_TRIM))
			return NBD_EINVAL;
		break;
	case NBD_CMD_WRITE_ZEROES:
		if (!srv_read_only(srv) &&
		    !(c->tflags & NBD_FLAG_SEND_WRITE_ZEROES))
			return NBD_EINVAL;
		allowed |= NBD_CMD_FLAG_NO_HOLE;
		break;
	case NBD_CMD_BLOCK_STATUS:
		if (!c->meta)
			return NBD_EINVAL;
		allowed |= NBD_CMD_FLAG_REQ_ONE;
		break;
	default:
		return NBD_EINVAL; /* NBD_CMD_CACHE (not offered), unknown */
	}
	if (cmd_writes(type) && srv_read_only(srv))
		return NBD_EPERM;
	if (flags & ~allowed)
		return NBD_EINVAL;
	if (type == NBD_CMD_FLUSH)
		return 0;
	if (len == 0)
		return NBD_EINVAL;
	if (type == NBD_CMD_READ && len > srv->max_payload)
		return NBD_EOVERFLOW;
	if (offset > srv->info->size || len > srv->info->size - offset)
		return type == NBD_CMD_READ || type == NBD_CMD_BLOCK_STATUS
			   ? NBD_EINVAL
			   : NBD_ENOSPC;
	return 0;
}

/* One request header from the input buffer. */
static int conn_request(struct nbd_conn *c)
{
	struct bks_nbd_server *srv = c->srv;
	const unsigned char *h = c->inbuf + c->inoff;
	uint16_t flags = bks_get_be16(h + 4), type = bks_get_be16(h + 6);
	uint64_t offset = bks_get_be64(h + 16);
	uint32_t len = bks_get_be32(h + 24), err = 0;
	struct nbd_slot *s;
	size_t need = 0;

	if (bks_get_be32(h) != NBD_REQUEST_MAGIC)
		return conn_drop(c);
	if (type == NBD_CMD_DISC) {
		/* Finish what is in flight, then close; read no more. */
		c->inoff += NBD_REQUEST_SIZE;
		c->disc = true;
		return PARSE_STOP;
	}
	/*
	 * A payload we will not take cannot be skipped cheaply (and a
	 * client that sends one is broken): hang up.
	 */
	if (type == NBD_CMD_WRITE && len > srv->max_payload)
		return conn_drop(c);
	err = request_check(c, type, flags, offset, len);
	if (!err && (type == NBD_CMD_READ || type == NBD_CMD_WRITE))
		need = align_up(offset + len, srv->bs) -
		       align_down(offset, srv->bs);
	s = slot_get(c, need, &err);
	if (!s) {
		/* Leave the header where it is; a completion unstalls. */
		c->stalled = true;
		return PARSE_STALL;
	}
	c->inoff += NBD_REQUEST_SIZE;
	srv->stats.requests++;
	c->nrequests++;
	s->cmd = type;
	s->flags = flags;
	s->cookie = bks_get_be64(h + 8);
	s->offset = offset;
	s->len = len;
	s->rx_done = 0;
	if (!err)
		err = slot_plan(s);
	if (err) {
		if (type == NBD_CMD_WRITE)
			c->skip = len; /* the payload still comes */
		slot_reply_error(s, err, nbd_error_errno(err));
		return 0;
	}
	if (type == NBD_CMD_WRITE) {
		s->state = SLOT_RECV;
		c->rx = s;
		return 0;
	}
	slot_dispatch(s);
	return 0;
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

			memcpy(s->buf + (s->offset - s->a) + s->rx_done,
			       c->inbuf + c->inoff, n);
			c->inoff += n;
			s->rx_done += (uint32_t)n;
			if (s->rx_done < s->len)
				return PARSE_MORE;
			c->rx = NULL;
			slot_dispatch(s);
			continue;
		}
		if (!conn_can_parse(c))
			return c->stalled ? PARSE_STALL : PARSE_STOP;
		switch (c->phase) {
		case PH_CLIENT_FLAGS:
			if (avail < 4)
				return PARSE_MORE;
			rc = conn_client_flags(c);
			break;
		case PH_OPTIONS:
			if (c->outoff < c->outlen)
				return PARSE_STALL; /* one reply at a time */
			if (avail < NBD_OPTION_HDR_SIZE)
				return PARSE_MORE;
			rc = conn_option(c);
			break;
		default:
			if (conn_backlogged(c))
				return PARSE_STALL; /* until replies go */
			if (avail < NBD_REQUEST_SIZE)
				return PARSE_MORE;
			rc = conn_request(c);
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
		dst = s->buf + (s->offset - s->a) + s->rx_done;
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
			conn_drop(c);
			return -1;
		}
	}
	do {
		n = recv(c->fd, dst, room, MSG_DONTWAIT);
	} while (n < 0 && errno == EINTR);
	if (n < 0) {
		if (errno != EAGAIN && errno != EWOULDBLOCK)
			conn_close(c); /* reset by the client */
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

		if (!conn_can_read(c))
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

	while (!c->dead && conn_output_pending(c)) {
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
				conn_close(c); /* the client is gone */
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
				slot_release(s);
			}
		}
	}
}

/* Close c if it is finished: disconnected, aborted, or shutting down. */
static void conn_check_close(struct nbd_conn *c)
{
	bool out = conn_output_pending(c);

	if (c->close_after_send && !out)
		conn_close(c);
	else if (c->phase != PH_TRANSMISSION && (c->eof || c->srv->stopping))
		conn_close(c);
	else if (c->phase == PH_TRANSMISSION &&
		 (c->disc || c->eof || c->srv->stopping) && c->nused == 0 &&
		 !out)
		conn_close(c);
}

/*
 * Is c stuck in the middle of something, waiting on its client: replies
 * it does not take, or a request it sent only part of?  (A header that
 * waits for a slot or a budget waits on us, not on the client.)
 */
static bool conn_stuck(const struct nbd_conn *c)
{
	return c->phase == PH_TRANSMISSION && !c->dead &&
	       (conn_output_pending(c) || c->rx || c->skip ||
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

	if (conn_can_read(c))
		ev |= EPOLLIN;
	if (conn_output_pending(c))
		ev |= EPOLLOUT;
	if (ev == c->events)
		return;
	if (bks_watch_mod(&c->watch, ev) < 0) {
		conn_close(c);
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
		if (!conn_can_parse(c) || c->inoff == c->inlen)
			break;
		if (i == 8) {
			conn_kick(c); /* more next time round */
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
		conn_close(c);
		return;
	}
	if ((events & (EPOLLIN | EPOLLHUP)) && conn_can_read(c))
		conn_read(c);
	if ((events & EPOLLHUP) && !c->dead) {
		/* Hung up both ways: nobody will read the replies. */
		conn_close(c);
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
		conn_close(c);
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
	conn_close(c);
}

/* A new client on fd (non-blocking) of process pid.  Returns 0 or -errno. */
static int conn_new(struct bks_nbd_server *srv, int fd, pid_t pid)
{
	struct nbd_conn *c;
	unsigned char *p;
	int rc = -ENOMEM;

	c = calloc(1, sizeof(*c));
	if (!c)
		return -ENOMEM;
	c->srv = srv;
	c->fd = fd;
	c->peer_pid = pid;
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
		link_init(&s->qlink);
		link_init(&s->alink);
		link_add_tail(&c->free, &s->link);
	}
	/* The greeting: fixed newstyle, and we can leave out the zeroes. */
	p = out_reserve(c, 8 + 8 + 2);
	if (!p)
		goto out;
	p = bks_put_be64(p, NBD_MAGIC);
	p = bks_put_be64(p, NBD_IHAVEOPT);
	bks_put_be16(p, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
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

/* ---- the server ---------------------------------------------------------- */

/*
 * May c be closed to make room for a newcomer?  When it is idle: nothing
 * in progress (no slot in use: nothing in flight, held, or queued),
 * nothing half received or half sent, not closing anyway.
 */
static bool conn_idle(const struct nbd_conn *c)
{
	return !c->dead && !c->eof && !c->disc && !c->close_after_send &&
	       c->nused == 0 && c->busy == 0 && !c->rx && !c->skip &&
	       c->inoff == c->inlen && !conn_output_pending(c);
}

/*
 * Or when it does not read its replies: some wait, and not a byte has
 * gone for NBD_STUCK_EVICT_NS (the stall check would drop it later).  A
 * client that reads takes bytes within milliseconds.
 */
static bool conn_not_reading(const struct nbd_conn *c, uint64_t now)
{
	return !c->dead && c->phase == PH_TRANSMISSION &&
	       conn_output_pending(c) &&
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
	conn_close(victim);
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
 * The server's deferred call: start writes that no longer wait, and tell
 * the owner about quiescence and the end of a shutdown -- from the top of
 * the loop, never from inside a completion.
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
		conn_kick(c);
	}
	if (!srv->holding)
		srv_start_waiters(srv);
	if (srv->holding && !srv->quiesced_sent && srv->stats.in_flight == 0) {
		srv->quiesced_sent = true;
		if (srv->quiesced)
			srv->quiesced(srv->quiesced_arg);
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
		conn_close(link_entry(l, struct nbd_conn, link));
}

int bks_nbd_server_new(struct bks_nbd_server **out, struct bks_loop *loop,
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
	srv->info = bks_chain_info(chain);
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
	srv->bs = srv->info->block_size;
	srv->max_payload = BKS_NBD_MAX_PAYLOAD;
	/* A chain with a request size limit gets it advertised. */
	if (srv->info->max_io && srv->info->max_io < srv->max_payload)
		srv->max_payload =
		    srv->info->max_io >= srv->bs
			? (uint32_t)align_down(srv->info->max_io, srv->bs)
			: srv->bs;
	link_init(&srv->conns);
	link_init(&srv->budget);
	link_init(&srv->held);
	link_init(&srv->wait);
	link_init(&srv->active);
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
	rc = bks_watch_add(loop, &srv->lwatch, listen_fd, EPOLLIN, srv_accept,
			   srv);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "nbd: watch the listening socket");
		goto out;
	}
	*out = srv;
	srv = NULL;
out:
	if (srv) {
		free(srv->name);
		free(srv->description);
		free(srv);
	}
	return rc;
}

void bks_nbd_server_hold(struct bks_nbd_server *srv,
			 void (*quiesced)(void *arg), void *arg)
{
	srv->holding = true;
	srv->quiesced = quiesced;
	srv->quiesced_arg = arg;
	srv->quiesced_sent = false;
	if (srv->stats.in_flight == 0) {
		srv->quiesced_sent = true;
		if (quiesced)
			quiesced(arg);
	}
}

void bks_nbd_server_resume(struct bks_nbd_server *srv)
{
	if (!srv->holding)
		return;
	srv->holding = false;
	srv->quiesced = NULL;
	srv->quiesced_arg = NULL;
	/* Writes that waited before the hold go first. */
	srv_start_waiters(srv);
	while (!link_empty(&srv->held)) {
		struct nbd_slot *s =
		    link_entry(srv->held.next, struct nbd_slot, qlink);

		link_del(&s->qlink);
		srv->stats.holding--;
		slot_start(s);
	}
}

void bks_nbd_server_shutdown(struct bks_nbd_server *srv,
			     void (*done)(void *arg), void *arg)
{
	struct nbd_link *l, *next;

	srv->done = done;
	srv->done_arg = arg;
	srv->done_sent = false;
	srv_kick(srv);
	if (srv->stopping)
		return;
	srv->stopping = true;
	bks_watch_del(&srv->lwatch);
	bks_timer_cancel(&srv->accept_timer);
	/* Requests not in the chain are answered now. */
	while (!link_empty(&srv->held)) {
		struct nbd_slot *s =
		    link_entry(srv->held.next, struct nbd_slot, qlink);

		link_del(&s->qlink);
		srv->stats.holding--;
		slot_reply_error(s, NBD_ESHUTDOWN, -ESHUTDOWN);
	}
	while (!link_empty(&srv->wait)) {
		struct nbd_slot *s =
		    link_entry(srv->wait.next, struct nbd_slot, qlink);

		link_del(&s->qlink);
		slot_reply_error(s, NBD_ESHUTDOWN, -ESHUTDOWN);
	}
	for (l = srv->conns.next; l != &srv->conns; l = next) {
		struct nbd_conn *c = link_entry(l, struct nbd_conn, link);

		next = l->next;
		if (c->rx) {
			/* A half-received write is never started. */
			struct nbd_slot *s = c->rx;

			c->rx = NULL;
			slot_release(s);
		}
		c->skip = 0;
		if (c->phase != PH_TRANSMISSION)
			conn_close(c);
		else
			conn_kick(c);
	}
	bks_timer_arm(&srv->stop_timer, NBD_SHUTDOWN_TIMEOUT_NS);
}

void bks_nbd_server_free(struct bks_nbd_server *srv)
{
	if (!srv)
		return;
	bks_watch_del(&srv->lwatch);
	/*
	 * The caller has shut down: no request of ours is in the chain.
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

void bks_nbd_server_get_stats(const struct bks_nbd_server *srv,
			      struct bks_nbd_stats *out)
{
	*out = srv->stats;
}
