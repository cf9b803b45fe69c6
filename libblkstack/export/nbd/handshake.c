/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD export: fixed newstyle negotiation -- the greeting, the
 * client's flags, and the options (NBD_OPT_*) up to NBD_OPT_GO or
 * NBD_OPT_EXPORT_NAME.  See internal.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "blkstack/endian.h"
#include "internal.h"

/* The transmission flags, true to the chain (and to the negotiation). */
static uint16_t transmission_flags(const struct nbd_conn *c)
{
	const struct bks_nbd_server *srv = c->srv;
	const struct bks_info *info = srv_info(srv);
	bool ro = nbd_srv_read_only(srv);
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
	nbd_conn_kick(c);
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
		nbd_conn_close(c);
		return PARSE_STOP;
	}
	memcpy(p, msg, n);
	return 0;
}

static int opt_ack(struct nbd_conn *c, uint32_t opt)
{
	if (!opt_reply(c, opt, NBD_REP_ACK, 0)) {
		nbd_conn_close(c);
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
		return nbd_conn_drop(c);
	conn_enter_transmission(c);
	p = out_reserve(c, n);
	if (!p) {
		nbd_conn_close(c);
		return PARSE_STOP;
	}
	memset(p, 0, n);
	p = bks_put_be64(p, srv_info(srv)->size);
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
	p = bks_put_be64(p, srv_info(srv)->size);
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
	nbd_conn_close(c);
	return PARSE_STOP;
}

static bool query_is(const unsigned char *q, uint32_t len, const char *s)
{
	return len == strlen(s) && memcmp(q, s, len) == 0;
}

/* The contexts we serve, in the order replies list them. */
static const struct meta_ctx {
	const char *name, *ns; /* the whole name, and its namespace */
	unsigned int bit;      /* NBD_META_* */
	uint32_t id;	       /* NBD_CTX_* */
} meta_ctxs[] = {
    {"base:allocation", "base:", NBD_META_ALLOCATION, NBD_CTX_BASE_ALLOCATION},
    {"qemu:allocation-depth", "qemu:", NBD_META_DEPTH,
     NBD_CTX_ALLOCATION_DEPTH},
};

/* The NBD_META_* bits a query names (a listing may name a namespace). */
static unsigned int meta_query(uint32_t opt, const unsigned char *q,
			       uint32_t ql)
{
	unsigned int bits = 0;

	for (size_t i = 0; i < sizeof(meta_ctxs) / sizeof(meta_ctxs[0]); i++)
		if (query_is(q, ql, meta_ctxs[i].name) ||
		    (opt == NBD_OPT_LIST_META_CONTEXT &&
		     query_is(q, ql, meta_ctxs[i].ns)))
			bits |= meta_ctxs[i].bit;
	return bits;
}

/*
 * NBD_OPT_LIST_META_CONTEXT and NBD_OPT_SET_META_CONTEXT: the contexts
 * are base:allocation and qemu:allocation-depth (internal.h), both only
 * if the chain knows holes (else every range is data of the sink: there
 * is nothing to map).  One NBD_REP_META_CONTEXT per context matched,
 * each once however often it is asked for, then the ack.
 */
static int opt_meta(struct nbd_conn *c, uint32_t opt, const unsigned char *data,
		    uint32_t len)
{
	const struct bks_nbd_server *srv = c->srv;
	bool has = bks_chain_has_extents(srv->chain);
	uint32_t namelen, nq, pos, ql;
	unsigned int match = 0;
	unsigned char *p;

	if (opt == NBD_OPT_SET_META_CONTEXT)
		c->meta = 0; /* replaced, even by a failed SET */
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
		if (len - pos < 4)
			return opt_error(c, opt, NBD_REP_ERR_INVALID,
					 "bad query count");
		ql = bks_get_be32(data + pos);
		pos += 4;
		if (ql > len - pos)
			return opt_error(c, opt, NBD_REP_ERR_INVALID,
					 "bad query length");
		match |= meta_query(opt, data + pos, ql);
		pos += ql;
	}
	if (pos != len)
		return opt_error(c, opt, NBD_REP_ERR_INVALID,
				 "bad option length");
	if (!export_name_matches(srv, data + 4, namelen))
		return opt_error(c, opt, NBD_REP_ERR_UNKNOWN, "no such export");
	if (opt == NBD_OPT_LIST_META_CONTEXT && nq == 0)
		match = NBD_META_ALLOCATION | NBD_META_DEPTH; /* list all */
	if (!has)
		match = 0;
	for (size_t i = 0; i < sizeof(meta_ctxs) / sizeof(meta_ctxs[0]); i++) {
		uint32_t n = (uint32_t)strlen(meta_ctxs[i].name);

		if (!(match & meta_ctxs[i].bit))
			continue;
		p = opt_reply(c, opt, NBD_REP_META_CONTEXT, 4 + n);
		if (!p) {
			nbd_conn_close(c);
			return PARSE_STOP;
		}
		/* A listing's ids are reserved: zero. */
		p = bks_put_be32(
		    p, opt == NBD_OPT_SET_META_CONTEXT ? meta_ctxs[i].id : 0);
		memcpy(p, meta_ctxs[i].name, n);
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
		nbd_conn_close(c);
		return PARSE_STOP;
	}
	p = bks_put_be32(p, n);
	memcpy(p, c->srv->name, n);
	return opt_ack(c, NBD_OPT_LIST);
}

/* One option from the input buffer (its header is there). */
int nbd_option(struct nbd_conn *c)
{
	const unsigned char *h = c->inbuf + c->inoff;
	uint32_t opt = bks_get_be32(h + 8), len = bks_get_be32(h + 12);
	const unsigned char *data = h + NBD_OPTION_HDR_SIZE;

	if (bks_get_be64(h) != NBD_IHAVEOPT)
		return nbd_conn_drop(c);
	if (len > NBD_OPT_MAX) {
		/* NBD_OPT_EXPORT_NAME cannot be answered with an error. */
		if (opt == NBD_OPT_EXPORT_NAME)
			return nbd_conn_drop(c);
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
int nbd_client_flags(struct nbd_conn *c)
{
	uint32_t f = bks_get_be32(c->inbuf + c->inoff);

	c->inoff += 4;
	/* Fixed newstyle is all we speak; unknown flags end the session. */
	if (!(f & NBD_FLAG_C_FIXED_NEWSTYLE) ||
	    (f & ~(NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES)))
		return nbd_conn_drop(c);
	c->no_zeroes = f & NBD_FLAG_C_NO_ZEROES;
	c->phase = PH_OPTIONS;
	return 0;
}

int nbd_greet(struct nbd_conn *c)
{
	/* Fixed newstyle, and we can leave out the zeroes. */
	unsigned char *p = out_reserve(c, 8 + 8 + 2);

	if (!p)
		return -ENOMEM;
	p = bks_put_be64(p, NBD_MAGIC);
	p = bks_put_be64(p, NBD_IHAVEOPT);
	bks_put_be16(p, NBD_FLAG_FIXED_NEWSTYLE | NBD_FLAG_NO_ZEROES);
	return 0;
}
