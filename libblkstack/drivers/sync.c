/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * sync:PATH -- a sink on a regular file or a block device, with plain
 * synchronous system calls.
 *
 * This driver blocks: every request is done with pread/pwrite (and
 * friends) inside the op and completed before the op returns.  That is
 * its documented purpose -- it is the sink for files on tmpfs, where
 * O_DIRECT and so aio: are unavailable, and the synchronous fallback
 * when the kernel's aio cannot be used.  It never opens with O_DIRECT, so
 * it works on any file system, and goes through the page cache: flush
 * (fdatasync) and FUA (RWF_DSYNC) are what make data durable.
 *
 * The image is opened with bks_image_open() (see image-file.h), and the
 * range ioctls, fallocate and datasync are the shared ones there, which
 * aio: makes off its loop (anything sync: adds is its fallbacks).
 * Anything but a
 * regular file or a block device is refused, and so is an empty image or
 * one whose size is not a multiple of 512 bytes (never rounded down, which
 * would hide its tail).
 */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blkstack/driver.h"
#include "blkstack/image-file.h"

#define SYNC_USAGE	"sync:PATH (a regular file or a block device)"
#define SYNC_BLOCK_SIZE 512u
/* The zero buffer for writing zeroes where fallocate cannot, and how
 * many times one write repeats it. */
#define ZERO_BUF_SIZE (64u * 1024)
#define ZERO_BUF_IOV  16

struct sync_state {
	struct bks_image img; /* with what fallocate refused */
	bool read_only;
	/* The kernel refused RWF_DSYNC once (EOPNOTSUPP): write, then sync. */
	bool no_rwf_dsync;
	void *zero_buf; /* ZERO_BUF_SIZE zeroed bytes, allocated at open */
};

static int sync_open(void *state, struct bks_layer *self,
		     const struct bks_open_args *args, struct bks_error *err)
{
	struct sync_state *s = state;
	const char *path = args->args;
	struct bks_image img;
	int r;

	(void)self;
	s->img.fd = -1;
	r = bks_image_open(&img, path, args->read_only ? O_RDONLY : O_RDWR,
			   err);
	if (r < 0)
		return r;
	/* The device's sectors are a multiple of 512: any is reachable. */
	r = bks_image_check_size(path, img.size, SYNC_BLOCK_SIZE, err);
	if (r < 0)
		goto out;
	s->read_only = args->read_only;
	if (!s->read_only) {
		/* Allocated now: nothing allocates on the data path. */
		s->zero_buf = calloc(1, ZERO_BUF_SIZE);
		if (!s->zero_buf) {
			r = bks_error_set(err, ENOMEM, "zero buffer for %s",
					  path);
			goto out;
		}
	}
	s->img = img;
	img.fd = -1;
out:
	bks_image_close(&img);
	return r;
}

static void sync_close(void *state, struct bks_layer *self)
{
	struct sync_state *s = state;

	(void)self;
	bks_image_close(&s->img);
	free(s->zero_buf);
}

static int sync_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct sync_state *s = state;

	(void)self;
	bks_image_info(&s->img, SYNC_BLOCK_SIZE, s->read_only, info);
	return 0;
}

/*
 * Transfer len bytes between iov and the file at offset.  The kernel may
 * transfer less than asked (signals, page-cache pressure, a file that
 * shrank), so carry on from where it stopped until all is done; a
 * transfer of nothing (end of file) is -EIO.  iov holds exactly len bytes
 * (the framework checks that of every request).
 */
static int rw_full(struct sync_state *s, bool write, const struct iovec *iov,
		   int iovcnt, uint64_t offset, uint64_t len, int rwflags)
{
	uint64_t done = 0;
	size_t skip = 0; /* bytes of iov[i] already done */
	int i = 0;

	while (done < len && i < iovcnt) {
		const struct iovec *v = iov + i;
		struct iovec part;
		int cnt = iovcnt - i;
		ssize_t r;

		if (skip) {
			/* Resume inside an element: that element alone. */
			part.iov_base = (char *)iov[i].iov_base + skip;
			part.iov_len = iov[i].iov_len - skip;
			v = &part;
			cnt = 1;
		}
		if (cnt > IOV_MAX)
			cnt = IOV_MAX;
		if (write)
			r = pwritev2(s->img.fd, v, cnt, (off_t)(offset + done),
				     rwflags);
		else
			r = preadv2(s->img.fd, v, cnt, (off_t)(offset + done),
				    0);
		if (r < 0) {
			if (errno == EINTR)
				continue;
			return -errno;
		}
		if (r == 0)
			return -EIO;
		done += (uint64_t)r;
		while (r > 0 && i < iovcnt) {
			size_t avail = iov[i].iov_len - skip;

			if ((size_t)r < avail) {
				skip += (size_t)r;
				break;
			}
			r -= (ssize_t)avail;
			i++;
			skip = 0;
		}
	}
	return done < len ? -EIO : 0;
}

static int sync_read(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct sync_state *s = state;

	(void)self;
	bks_req_complete(req, rw_full(s, false, req->iov, req->iovcnt,
				      req->offset, req->len, 0));
	return 0;
}

static int do_write(struct sync_state *s, struct bks_req *req)
{
	int r;

	if (!(req->flags & BKS_REQ_FUA))
		return rw_full(s, true, req->iov, req->iovcnt, req->offset,
			       req->len, 0);
	if (!s->no_rwf_dsync) {
		r = rw_full(s, true, req->iov, req->iovcnt, req->offset,
			    req->len, RWF_DSYNC);
		if (r != -EOPNOTSUPP)
			return r;
		/* Kernel without per-write flags: write, then sync. */
		s->no_rwf_dsync = true;
	}
	r = rw_full(s, true, req->iov, req->iovcnt, req->offset, req->len, 0);
	return r < 0 ? r : bks_image_datasync(&s->img);
}

static int sync_write(void *state, struct bks_layer *self, struct bks_req *req)
{
	(void)self;
	bks_req_complete(req, do_write(state, req));
	return 0;
}

static int sync_flush(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct sync_state *s = state;

	(void)self;
	bks_req_complete(req, bks_image_datasync(&s->img));
	return 0;
}

static int sync_discard(void *state, struct bks_layer *self,
			struct bks_req *req)
{
	struct sync_state *s = state;

	(void)self;
	bks_req_complete(req,
			 bks_image_discard(&s->img, req->offset, req->len));
	return 0;
}

/* The last resort: write the zeroes themselves, a megabyte at a time. */
static int write_zero_buf(struct sync_state *s, const struct bks_req *req)
{
	uint64_t off = req->offset, left = req->len;

	while (left) {
		struct iovec iov[ZERO_BUF_IOV];
		uint64_t n = 0;
		int cnt = 0, r;

		/* The iovecs add up to exactly n: rw_full writes them all. */
		while (cnt < ZERO_BUF_IOV && n < left) {
			uint64_t take =
			    left - n < ZERO_BUF_SIZE ? left - n : ZERO_BUF_SIZE;

			iov[cnt].iov_base = s->zero_buf;
			iov[cnt].iov_len = take;
			cnt++;
			n += take;
		}
		r = rw_full(s, true, iov, cnt, off, n, 0);
		if (r < 0)
			return r;
		off += n;
		left -= n;
	}
	return 0;
}

static int do_write_zeroes(struct sync_state *s, const struct bks_req *req)
{
	int r = bks_image_zero(&s->img, req->offset, req->len, req->flags);

	/* A file system with neither punch nor ZERO_RANGE: punch and
	 * allocate again (tmpfs), else write the zeroes themselves. */
	if (r == -EOPNOTSUPP && !s->img.is_blk) {
		r = bks_image_zero_realloc(&s->img, req->offset, req->len);
		if (r == -EOPNOTSUPP)
			r = write_zero_buf(s, req);
	}
	/* fallocate and BLKZEROOUT have no per-call FUA: sync after. */
	if (r == 0 && (req->flags & BKS_REQ_FUA))
		r = bks_image_datasync(&s->img);
	return r;
}

static int sync_write_zeroes(void *state, struct bks_layer *self,
			     struct bks_req *req)
{
	(void)self;
	bks_req_complete(req, do_write_zeroes(state, req));
	return 0;
}

/* Holes and data of the file (SEEK_DATA/SEEK_HOLE), for NBD block status. */
static int sync_block_status(void *state, struct bks_layer *self,
			     struct bks_req *req)
{
	struct sync_state *s = state;

	(void)self;
	bks_req_complete(req, bks_image_block_status(&s->img, req));
	return 0;
}

/* What parsing needs of sync: (bks_driver_descs[] has it alone). */
#define SYNC_DESC                                                              \
	{                                                                      \
		.name = "sync", .kind = BKS_SINK, .args_path = true,           \
		.usage = SYNC_USAGE                                            \
	}

const struct bks_driver_desc bks_desc_sync = SYNC_DESC;

const struct bks_driver bks_driver_sync = {
    .desc = SYNC_DESC,
    .state_size = sizeof(struct sync_state),
    .open = sync_open,
    .close = sync_close,
    .info = sync_info,
    .read = sync_read,
    .write = sync_write,
    .flush = sync_flush,
    .discard = sync_discard,
    .write_zeroes = sync_write_zeroes,
    .block_status = sync_block_status,
};
