/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The FUSE export's data requests: READ, WRITE, FSYNC/FLUSH, FALLOCATE,
 * each checked, turned into one bks_req and answered from its completion.
 * See internal.h and include/blkstack/fuse-server.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <string.h>

#include "internal.h"

static void done(struct bks_req *r, int result)
{
	struct fx_req *q = r->opaque;
	struct fx *fx = q->fx;
	struct fuse_write_out wo = {.size = q->len};
	struct iovec iov;

	if (result < 0) {
		fx_req_reply(q, -result, NULL, 0);
	} else if (q->opcode == FUSE_READ) {
		iov = (struct iovec){.iov_base = q->buf + q->buf_skew,
				     .iov_len = q->len};
		fx->st.bytes_read += q->len;
		fx_req_reply(q, 0, &iov, 1);
	} else if (q->opcode == FUSE_WRITE) {
		iov = (struct iovec){.iov_base = &wo, .iov_len = sizeof(wo)};
		fx->st.bytes_written += q->len;
		fx_req_reply(q, 0, &iov, 1);
	} else {
		fx_req_reply(q, 0, NULL, 0);
	}
	fx_req_put(q);
}

static void submit(struct fx_req *q, enum bks_op op, uint32_t flags,
		   uint64_t offset, uint64_t len)
{
	q->r.op = op;
	q->r.flags = flags;
	q->r.offset = offset;
	q->r.len = len;
	if (op == BKS_OP_READ || op == BKS_OP_WRITE) {
		q->iov = (struct iovec){.iov_base = q->buf + q->buf_skew,
					.iov_len = len};
		q->r.iov = &q->iov;
		q->r.iovcnt = 1;
	}
	q->r.done = done;
	q->r.opaque = q;
	bks_chain_submit(q->fx->chain, &q->r);
}

void fx_read(struct fx *fx, const struct fuse_in_header *in,
	     const struct fuse_read_in *arg)
{
	uint64_t size = fx_size(fx), off = arg->offset, len = arg->size;
	struct fx_req *q;

	if (in->nodeid != FX_INO_FILE) {
		fx_reply_err(fx, in->unique, EINVAL);
		return;
	}
	if (off >= size || len == 0) {
		fx_reply_err(fx, in->unique, 0); /* end of file: no data */
		return;
	}
	if (len > BKS_FUSE_MAX_IO)
		len = BKS_FUSE_MAX_IO;
	if (len > size - off)
		len = size - off;
	q = fx_req_get(fx, in->unique, FUSE_READ);
	if (!q) {
		fx_reply_err(fx, in->unique, ENOMEM);
		return;
	}
	q->buf_skew = bks_chain_buf_skew(fx->chain, off);
	if (q->ent && q->buf_skew == 0) {
		/* Read into the ring entry's payload: the answer is there. */
		q->buf = q->ent->payload;
		q->buf_borrowed = true;
	} else {
		q->buf = fx_buf_get(fx, q->buf_skew + len, &q->buf_class);
	}
	if (!q->buf) {
		fx_reply_err(fx, in->unique, ENOMEM);
		fx_req_put(q);
		return;
	}
	q->len = (uint32_t)len;
	submit(q, BKS_OP_READ, 0, off, len);
}

void fx_write(struct fx *fx, const struct fuse_in_header *in,
	      const struct fuse_write_in *arg, const char *data)
{
	uint64_t size = fx_size(fx), off = arg->offset, len = arg->size;
	struct fx_req *q;
	size_t skew;

	/* The payload is what follows the header, exactly. */
	if (in->nodeid != FX_INO_FILE || len > BKS_FUSE_MAX_IO ||
	    in->len != FX_HDR_SIZE + len) {
		fx_reply_err(fx, in->unique, EINVAL);
		return;
	}
	if (fx_read_only(fx)) {
		fx_reply_err(fx, in->unique, EROFS);
		return;
	}
	if (len == 0) {
		struct fuse_write_out wo = {.size = 0};
		struct iovec iov = {.iov_base = &wo, .iov_len = sizeof(wo)};

		fx_reply(fx, in->unique, 0, &iov, 1);
		return;
	}
	/* The disk does not grow: nothing is written past its end. */
	if (off >= size || len > size - off) {
		fx_reply_err(fx, in->unique, ENOSPC);
		return;
	}
	q = fx_req_get(fx, in->unique, FUSE_WRITE);
	if (!q) {
		fx_reply_err(fx, in->unique, ENOMEM);
		return;
	}
	skew = bks_chain_buf_skew(fx->chain, off);
	if (q->ent && skew == 0) {
		/* Written from the ring entry's payload, which stays ours
		 * until the answer. */
		q->buf = (char *)data;
		q->buf_borrowed = true;
	} else if (!q->ent && skew == 0 && len >= FX_STEAL_MIN) {
		/* The payload is at the start of the receive buffer: keep it.
		 */
		q->buf = fx->rbuf;
		q->buf_class = FX_BUF_CLASSES - 1;
		fx->rbuf = NULL;
	} else {
		q->buf = fx_buf_get(fx, skew + len, &q->buf_class);
		if (!q->buf) {
			fx_reply_err(fx, in->unique, ENOMEM);
			fx_req_put(q);
			return;
		}
		memcpy(q->buf + skew, data, len);
	}
	q->buf_skew = skew;
	q->len = (uint32_t)len;
	submit(q, BKS_OP_WRITE, 0, off, len);
}

void fx_flush(struct fx *fx, const struct fuse_in_header *in)
{
	struct fx_req *q;

	if (fx_read_only(fx) || !fx_can(fx, BKS_OP_FLUSH)) {
		fx_reply_err(fx, in->unique, 0);
		return;
	}
	q = fx_req_get(fx, in->unique, in->opcode);
	if (!q) {
		fx_reply_err(fx, in->unique, ENOMEM);
		return;
	}
	submit(q, BKS_OP_FLUSH, 0, 0, 0);
}

void fx_fallocate(struct fx *fx, const struct fuse_in_header *in,
		  const struct fuse_fallocate_in *arg)
{
	uint64_t size = fx_size(fx), off = arg->offset, len = arg->length;
	uint32_t flags;
	struct fx_req *q;

	if (in->nodeid != FX_INO_FILE || len == 0 || off > INT64_MAX ||
	    len > INT64_MAX - off) {
		fx_reply_err(fx, in->unique, EINVAL);
		return;
	}
	if (fx_read_only(fx)) {
		fx_reply_err(fx, in->unique, EROFS);
		return;
	}
	if (arg->mode == 0) {
		/* Allocating inside the disk: it is all there already. */
		fx_reply_err(fx, in->unique,
			     off + len <= size ? 0 : EOPNOTSUPP);
		return;
	}
	if (arg->mode == (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE))
		flags = 0;
	else if (arg->mode == FALLOC_FL_ZERO_RANGE ||
		 arg->mode == (FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE))
		flags = BKS_REQ_NO_HOLE;
	else {
		fx_reply_err(fx, in->unique, EOPNOTSUPP);
		return;
	}
	if (!fx_can(fx, BKS_OP_WRITE_ZEROES)) {
		fx_reply_err(fx, in->unique, EOPNOTSUPP);
		return;
	}
	if (off >= size) {
		fx_reply_err(fx, in->unique, 0);
		return;
	}
	if (len > size - off)
		len = size - off;
	q = fx_req_get(fx, in->unique, FUSE_FALLOCATE);
	if (!q) {
		fx_reply_err(fx, in->unique, ENOMEM);
		return;
	}
	/* The chain splits it at the sink's limits. */
	submit(q, BKS_OP_WRITE_ZEROES, flags, off, len);
}
