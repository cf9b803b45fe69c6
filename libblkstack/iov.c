/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Byte ranges of a request's buffers: see blkstack/iov.h. */
#include <errno.h>
#include <stdbool.h>
#include <string.h>

#include "blkstack/iov.h"

/*
 * Walk bytes [skip, skip + n) of req's buffers: copy to or from buf, or
 * zero them (buf NULL).
 */
static void walk(const struct bks_req *req, uint64_t skip, unsigned char *buf,
		 uint64_t n, bool to_iov)
{
	for (int i = 0; i < req->iovcnt && n > 0; i++) {
		size_t l = req->iov[i].iov_len, t;
		unsigned char *p = req->iov[i].iov_base;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		t = l - skip < n ? l - skip : (size_t)n;
		if (!buf)
			memset(p + skip, 0, t);
		else if (to_iov)
			memcpy(p + skip, buf, t);
		else
			memcpy(buf, p + skip, t);
		if (buf)
			buf += t;
		n -= t;
		skip = 0;
	}
}

void bks_iov_from_buf(const struct bks_req *req, uint64_t skip, const void *buf,
		      size_t n)
{
	walk(req, skip, (unsigned char *)buf, n, true);
}

void bks_iov_to_buf(const struct bks_req *req, uint64_t skip, void *buf,
		    size_t n)
{
	walk(req, skip, buf, n, false);
}

void bks_iov_zero(const struct bks_req *req, uint64_t skip, uint64_t n)
{
	walk(req, skip, NULL, n, true);
}

int bks_iov_slice(const struct bks_req *req, uint64_t skip, uint64_t n,
		  struct iovec *iov, int *cnt, int max)
{
	for (int i = 0; i < req->iovcnt && n > 0; i++) {
		size_t l = req->iov[i].iov_len, t;

		if (skip >= l) {
			skip -= l;
			continue;
		}
		if (*cnt >= max)
			return -E2BIG;
		t = l - skip < n ? l - skip : (size_t)n;
		iov[*cnt].iov_base =
		    (unsigned char *)req->iov[i].iov_base + skip;
		iov[*cnt].iov_len = t;
		(*cnt)++;
		n -= t;
		skip = 0;
	}
	return 0;
}
