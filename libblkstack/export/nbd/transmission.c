/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD export: the transmission phase -- each request (NBD_CMD_*)
 * checked, translated to a bks_req for the chain and back to a simple or
 * structured reply, and block status.  See internal.h.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/endian.h"
#include "internal.h"

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
	nbd_conn_kick(c);
}

/*
 * Encode an error reply for s: a structured error chunk (with a message
 * for humans) when structured replies were negotiated, else a simple
 * reply.  rc is the -errno behind it, for the message.
 */
void nbd_slot_reply_error(struct nbd_slot *s, uint32_t err, int rc)
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

/* Encode the successful reply of s (but block status's). */
static void slot_reply_ok(struct nbd_slot *s)
{
	struct nbd_conn *c = s->conn;
	unsigned char *p = s->rep;

	s->data = NULL;
	s->data_len = 0;
	if (s->cmd == NBD_CMD_READ) {
		s->data = s->buf + s->skew;
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

/* The status of one extent in context id (internal.h). */
static uint32_t extent_status(const struct bks_extent *e, uint32_t id)
{
	uint32_t st = 0;

	if (id == NBD_CTX_ALLOCATION_DEPTH)
		return e->depth;
	if (e->flags & BKS_EXTENT_HOLE)
		st |= NBD_STATE_HOLE;
	if (e->flags & BKS_EXTENT_ZERO)
		st |= NBD_STATE_ZERO;
	return st;
}

/*
 * Encode at p one NBD_REPLY_TYPE_BLOCK_STATUS chunk for context id from
 * the s->nextents extents the chain put in s->buf (at most
 * NBD_BS_CHUNK_MAX bytes).  Returns its length, or 0 if the chain gave
 * no extent.
 */
static size_t bs_chunk(const struct nbd_slot *s, unsigned char *p, uint32_t id,
		       bool done)
{
	const struct bks_extent *ext = (const struct bks_extent *)s->buf;
	unsigned char *d = p + NBD_STRUCTURED_HDR_SIZE + 4;
	unsigned char *last = NULL;
	uint64_t total = 0;
	uint32_t nd = 0;

	for (size_t i = 0; i < s->nextents && total < s->len; i++) {
		uint64_t l = ext[i].length;
		uint32_t st = extent_status(&ext[i], id);

		if (l == 0)
			break;
		if (l > s->len - total)
			l = s->len - total;
		total += l;
		/* Neighbours with the same status are one descriptor. */
		if (last && bks_get_be32(last + 4) == st) {
			bks_put_be32(last, bks_get_be32(last) + (uint32_t)l);
			continue;
		}
		last = d;
		d = bks_put_be32(d, (uint32_t)l);
		d = bks_put_be32(d, st);
		nd++;
	}
	if (nd == 0)
		return 0;
	p = bks_put_be32(p, NBD_STRUCTURED_REPLY_MAGIC);
	p = bks_put_be16(p, done ? NBD_REPLY_FLAG_DONE : 0);
	p = bks_put_be16(p, NBD_REPLY_TYPE_BLOCK_STATUS);
	p = bks_put_be64(p, s->cookie);
	p = bks_put_be32(p, 4 + 8 * nd);
	bks_put_be32(p, id);
	return NBD_STRUCTURED_HDR_SIZE + 4 + 8 * nd;
}

/*
 * Encode the reply of NBD_CMD_BLOCK_STATUS: one chunk per context the
 * client set, base:allocation first, the last one flagged done.
 */
static void slot_reply_block_status(struct nbd_slot *s)
{
	unsigned int meta = s->conn->meta;
	size_t off = 0, n;

	if (meta & NBD_META_ALLOCATION) {
		n = bs_chunk(s, s->rep, NBD_CTX_BASE_ALLOCATION,
			     !(meta & NBD_META_DEPTH));
		if (n == 0)
			goto bug;
		off += n;
	}
	if (meta & NBD_META_DEPTH) {
		n = bs_chunk(s, s->rep + off, NBD_CTX_ALLOCATION_DEPTH, true);
		if (n == 0)
			goto bug;
		off += n;
	}
	s->rep_len = off;
	s->data = NULL;
	s->data_len = 0;
	slot_queue_reply(s);
	return;
bug:
	/* The chain vouches for at least one extent: a driver bug. */
	nbd_slot_reply_error(s, NBD_EIO, -EIO);
}

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
	if (c->dead) {
		/* The client is gone: complete into nothing. */
		nbd_slot_release(s);
		nbd_conn_kick(c);
		return;
	}
	if (result < 0) {
		nbd_slot_reply_error(s, nbd_error(result), result);
		return;
	}
	if (s->cmd == NBD_CMD_READ)
		srv->stats.bytes_read += s->len;
	else if (s->cmd == NBD_CMD_WRITE)
		srv->stats.bytes_written += s->len;
	if (s->cmd == NBD_CMD_BLOCK_STATUS)
		slot_reply_block_status(s);
	else
		slot_reply_ok(s);
}

static void slot_submit(struct nbd_slot *s);

static void slot_req_done(struct bks_req *req, int result)
{
	struct nbd_slot *s = req->opaque;

	if (result == 0 && s->then_flush && !s->flushing) {
		s->flushing = true;
		slot_submit(s);
		return;
	}
	if (req->op == BKS_OP_BLOCK_STATUS)
		s->nextents = result == 0 ? req->nextents : 0;
	slot_finish(s, result);
}

/* Submit s's request (or its flush) to the chain. */
static void slot_submit(struct nbd_slot *s)
{
	struct bks_nbd_server *srv = s->conn->srv;
	struct bks_req *req = s->req;

	memset(req, 0, sizeof(*req));
	req->done = slot_req_done;
	req->opaque = s;
	if (s->flushing) {
		req->op = BKS_OP_FLUSH;
		bks_chain_submit(srv->chain, req);
		return;
	}
	req->op = s->op;
	req->offset = s->offset;
	req->len = s->len;
	/* FUA is valid on every command; it means something on writes. */
	if ((s->flags & NBD_CMD_FLAG_FUA) &&
	    (s->op == BKS_OP_WRITE || s->op == BKS_OP_WRITE_ZEROES))
		req->flags |= BKS_REQ_FUA;
	if (s->flags & NBD_CMD_FLAG_NO_HOLE)
		req->flags |= BKS_REQ_NO_HOLE;
	if (s->op == BKS_OP_READ || s->op == BKS_OP_WRITE) {
		s->iov.iov_base = s->buf + s->skew;
		s->iov.iov_len = s->len;
		req->iov = &s->iov;
		req->iovcnt = 1;
	}
	if (s->op == BKS_OP_BLOCK_STATUS) {
		/* The answer goes in the slot's buffer (see nbd_request()). */
		req->extents = (struct bks_extent *)s->buf;
		req->extents_max =
		    s->flags & NBD_CMD_FLAG_REQ_ONE ? 1 : NBD_MAX_EXTENTS;
	}
	bks_chain_submit(srv->chain, req);
}

/* Start s: submit it to the chain. */
void nbd_slot_start(struct nbd_slot *s)
{
	struct nbd_conn *c = s->conn;
	struct bks_nbd_server *srv = c->srv;

	/* The pool has one request per slot: this never fails. */
	s->req = bks_req_get(&c->pool);
	s->state = SLOT_BUSY;
	srv->stats.in_flight++;
	c->busy++;
	s->flushing = false;
	slot_submit(s);
}

/* A request has arrived whole: start it (a hold is the chain's). */
void nbd_slot_dispatch(struct nbd_slot *s)
{
	struct bks_nbd_server *srv = s->conn->srv;

	if (srv->stopping) {
		nbd_slot_reply_error(s, NBD_ESHUTDOWN, -ESHUTDOWN);
		return;
	}
	nbd_slot_start(s);
}

/* The chain request for s (see struct nbd_slot). */
static void slot_plan(struct nbd_slot *s)
{
	const struct bks_nbd_server *srv = s->conn->srv;

	s->then_flush = false;
	s->skew = bks_chain_buf_skew(srv->chain, s->offset);
	switch (s->cmd) {
	case NBD_CMD_READ:
		s->op = BKS_OP_READ;
		break;
	case NBD_CMD_WRITE:
		s->op = BKS_OP_WRITE;
		break;
	case NBD_CMD_FLUSH:
		s->op = BKS_OP_FLUSH;
		s->offset = 0;
		s->len = 0;
		break;
	case NBD_CMD_TRIM:
		s->op = BKS_OP_DISCARD;
		/* FUA: the discard is durable when we reply. */
		s->then_flush = (s->flags & NBD_CMD_FLAG_FUA) &&
				(srv_info(srv)->ops & BKS_OPF(BKS_OP_FLUSH));
		break;
	case NBD_CMD_WRITE_ZEROES:
		s->op = BKS_OP_WRITE_ZEROES;
		break;
	case NBD_CMD_BLOCK_STATUS:
		s->op = BKS_OP_BLOCK_STATUS;
		break;
	default:
		break; /* refused by request_check() */
	}
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
		if (!nbd_srv_read_only(srv) &&
		    !(c->tflags & NBD_FLAG_SEND_TRIM))
			return NBD_EINVAL;
		break;
	case NBD_CMD_WRITE_ZEROES:
		if (!nbd_srv_read_only(srv) &&
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
	if (cmd_writes(type) && nbd_srv_read_only(srv))
		return NBD_EPERM;
	if (flags & ~allowed)
		return NBD_EINVAL;
	if (type == NBD_CMD_FLUSH)
		return 0;
	if (len == 0)
		return NBD_EINVAL;
	if (type == NBD_CMD_READ && len > srv->max_payload)
		return NBD_EOVERFLOW;
	if (offset > srv_info(srv)->size || len > srv_info(srv)->size - offset)
		return type == NBD_CMD_READ || type == NBD_CMD_BLOCK_STATUS
			   ? NBD_EINVAL
			   : NBD_ENOSPC;
	return 0;
}

/* One request header from the input buffer. */
int nbd_request(struct nbd_conn *c)
{
	struct bks_nbd_server *srv = c->srv;
	const unsigned char *h = c->inbuf + c->inoff;
	uint16_t flags = bks_get_be16(h + 4), type = bks_get_be16(h + 6);
	uint64_t offset = bks_get_be64(h + 16);
	uint32_t len = bks_get_be32(h + 24), err = 0;
	struct nbd_slot *s;
	size_t need = 0;

	if (bks_get_be32(h) != NBD_REQUEST_MAGIC)
		return nbd_conn_drop(c);
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
		return nbd_conn_drop(c);
	err = request_check(c, type, flags, offset, len);
	if (!err && (type == NBD_CMD_READ || type == NBD_CMD_WRITE))
		need = bks_chain_buf_skew(srv->chain, offset) + len;
	/* Block status: the chain's extents land in the data buffer. */
	if (!err && type == NBD_CMD_BLOCK_STATUS)
		need = NBD_MAX_EXTENTS * sizeof(struct bks_extent);
	s = nbd_slot_get(c, need, &err);
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
	slot_plan(s);
	if (err) {
		if (type == NBD_CMD_WRITE)
			c->skip = len; /* the payload still comes */
		nbd_slot_reply_error(s, err, nbd_error_to_errno(err));
		return 0;
	}
	if (type == NBD_CMD_WRITE) {
		s->state = SLOT_RECV;
		c->rx = s;
		return 0;
	}
	nbd_slot_dispatch(s);
	return 0;
}
