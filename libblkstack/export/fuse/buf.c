/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The FUSE export: the request pool, the aligned data buffers, and
 * answering on /dev/fuse (or, for a request that came in a ring entry,
 * through uring.c).  See internal.h.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "internal.h"

uint64_t fx_size(const struct fx *fx)
{
	return bks_chain_info(fx->chain)->size;
}

bool fx_read_only(const struct fx *fx)
{
	const struct bks_info *info = bks_chain_info(fx->chain);

	return fx->ro || info->read_only ||
	       !(info->ops & BKS_OPF(BKS_OP_WRITE));
}

bool fx_can(const struct fx *fx, enum bks_op op)
{
	return (bks_chain_info(fx->chain)->ops & BKS_OPF(op)) != 0;
}

struct fx_req *fx_req_get(struct fx *fx, uint64_t unique, uint32_t opcode)
{
	struct fx_req *q = fx->free_reqs;

	if (q)
		fx->free_reqs = q->next;
	else if (!(q = malloc(sizeof(*q))))
		return NULL;
	memset(q, 0, sizeof(*q));
	q->fx = fx;
	q->unique = unique;
	q->opcode = opcode;
	q->buf_class = -1;
	/* A request from a ring entry is answered through it, later. */
	q->ent = fx->cur_ent;
	if (q->ent)
		q->ent->owned = true;
	fx->in_flight++;
	return q;
}

void fx_req_put(struct fx_req *q)
{
	struct fx *fx = q->fx;

	if (q->buf && !q->buf_borrowed)
		fx_buf_put(fx, q->buf, q->buf_class);
	q->next = fx->free_reqs;
	fx->free_reqs = q;
	fx->in_flight--;
	/* A shutdown waits for the last one (session.c's deferred call). */
	if (fx->stopping && fx->in_flight == 0)
		bks_defer_schedule(&fx->defer);
}

/* The class whose buffers hold size bytes. */
static int buf_class(size_t size)
{
	for (int i = 0; i < FX_BUF_CLASSES; i++)
		if (size <= (size_t)FX_BUF_ALIGN << i)
			return i;
	return -1;
}

char *fx_buf_get(struct fx *fx, size_t size, int *cls)
{
	int c = buf_class(size);
	void *p;

	if (c < 0)
		return NULL;
	*cls = c;
	if (fx->nbufs[c])
		p = fx->bufs[c][--fx->nbufs[c]];
	else if (posix_memalign(&p, FX_BUF_ALIGN, (size_t)FX_BUF_ALIGN << c))
		return NULL;
	fx->st.buffer_bytes += (size_t)FX_BUF_ALIGN << c;
	return p;
}

void fx_buf_put(struct fx *fx, char *buf, int cls)
{
	if (cls < 0 || cls >= FX_BUF_CLASSES) {
		free(buf);
		return;
	}
	fx->st.buffer_bytes -= (size_t)FX_BUF_ALIGN << cls;
	if (fx->nbufs[cls] < FX_BUF_KEEP)
		fx->bufs[cls][fx->nbufs[cls]++] = buf;
	else
		free(buf);
}

void fx_pool_free(struct fx *fx)
{
	struct fx_req *q;

	while ((q = fx->free_reqs)) {
		fx->free_reqs = q->next;
		free(q);
	}
	for (int c = 0; c < FX_BUF_CLASSES; c++)
		while (fx->nbufs[c])
			free(fx->bufs[c][--fx->nbufs[c]]);
}

/* Answer unique, which came in ring entry e or (NULL) on /dev/fuse. */
static int reply_to(struct fx *fx, struct fx_ent *e, uint64_t unique, int error,
		    const struct iovec *iov, int n)
{
	struct fuse_out_header oh = {.error = -error, .unique = unique};
	struct iovec v[4];
	size_t len = sizeof(oh);
	ssize_t w;

	if (error || n < 0)
		n = 0;
	if (n > 3)
		return -EINVAL;
	if (e) {
		if (error)
			fx->st.errors++;
		return fx_uring_reply(e, error, iov, n);
	}
	v[0] = (struct iovec){.iov_base = &oh, .iov_len = sizeof(oh)};
	for (int i = 0; i < n; i++) {
		v[i + 1] = iov[i];
		len += iov[i].iov_len;
	}
	oh.len = (uint32_t)len;
	if (error)
		fx->st.errors++;
	do
		w = writev(fx->fd, v, n + 1);
	while (w < 0 && errno == EINTR);
	if (w >= 0)
		return 0;
	/* ENOENT: the kernel no longer waits for this one (interrupted). */
	if (errno == ENOENT)
		return 0;
	return -errno;
}

int fx_reply(struct fx *fx, uint64_t unique, int error, const struct iovec *iov,
	     int n)
{
	struct fx_ent *e = fx->cur_ent;

	/* While a ring entry's request is dispatched, its answers. */
	return reply_to(fx, e && e->unique == unique ? e : NULL, unique, error,
			iov, n);
}

int fx_req_reply(struct fx_req *q, int error, const struct iovec *iov, int n)
{
	return reply_to(q->fx, q->ent, q->unique, error, iov, n);
}

int fx_reply_err(struct fx *fx, uint64_t unique, int error)
{
	return fx_reply(fx, unique, error, NULL, 0);
}
