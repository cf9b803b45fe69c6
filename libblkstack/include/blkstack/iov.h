/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Byte ranges of a request's buffers (req->iov, req->iovcnt), for layers
 * that split a request into pieces (an image format mapping a guest range
 * onto clusters, the chain's padding): copying, zeroing, and slicing them
 * into the iovecs of a sub-request.  No allocation; nothing blocks.
 */
#ifndef BLKSTACK_IOV_H
#define BLKSTACK_IOV_H

#include <stddef.h>
#include <stdint.h>
#include <sys/uio.h>

#include "blkstack/driver.h"

/*
 * Copy n bytes between buf and bytes [skip, skip + n) of req's buffers:
 * into them (bks_iov_from_buf) or out of them (bks_iov_to_buf).  The
 * range must lie within req->len.
 */
void bks_iov_from_buf(const struct bks_req *req, uint64_t skip, const void *buf,
		      size_t n);
void bks_iov_to_buf(const struct bks_req *req, uint64_t skip, void *buf,
		    size_t n);

/* Zero bytes [skip, skip + n) of req's buffers. */
void bks_iov_zero(const struct bks_req *req, uint64_t skip, uint64_t n);

/*
 * Append the iovecs of bytes [skip, skip + n) of req's buffers to
 * iov[*cnt], iov[*cnt + 1], ... (at most max in all), advancing *cnt.
 * Returns 0, or -E2BIG when they do not fit in max (*cnt and the entries
 * already written are then unspecified).
 */
int bks_iov_slice(const struct bks_req *req, uint64_t skip, uint64_t n,
		  struct iovec *iov, int *cnt, int max);

#endif /* BLKSTACK_IOV_H */
