/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * aio:PATH -- a sink on a raw image file or a block device, with Linux
 * native aio and O_DIRECT.
 *
 * Reads, writes and flushes go through a bks_aioq (see aioq.h): batched
 * per loop iteration, merged when adjacent, completed from the loop.
 * Nothing blocks on that path.  Discard and write_zeroes are fallocate()
 * or a BLKDISCARD/BLKZEROOUT ioctl, which have no aio form: they are
 * done synchronously inside the op.  They are rare, and mostly metadata
 * work for the file system or the device.
 *
 * O_DIRECT means:
 *   - the file system must support it: tmpfs (before Linux 6.6) and some
 *     FUSE file systems do not, and open fails; use sync: there.
 *   - offsets and lengths are multiples of the O_DIRECT alignment.  The
 *     layer's block_size is at least that alignment (512 bytes for files,
 *     or what statx(STATX_DIOALIGN) reports; the logical sector size for
 *     devices), and the framework checks requests against it.
 *   - buffers must be aligned in memory: callers allocate them with
 *     posix_memalign(block_size).  A misaligned buffer address or length
 *     is refused with -EINVAL (the kernel would refuse it anyway, later
 *     and less clearly).
 *   - data bypasses the page cache, so a completed write is in the
 *     device (or its volatile cache): flush (aio fdsync, or fdatasync)
 *     and FUA (RWF_DSYNC) make it durable.
 *
 * The image is opened with bks_image_open() (see driver.h): anything but a
 * regular file or a block device, an empty image and one whose size is not
 * a multiple of block_size are refused -- the tail of such a file could be
 * neither read nor written with O_DIRECT.
 */
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <stdbool.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "blkstack/aioq.h"
#include "blkstack/driver.h"

#define AIO_USAGE                                                              \
	"aio:PATH (a raw image file or a block device, opened with O_DIRECT)"
/* Smallest block size, and the O_DIRECT alignment assumed for files when
 * the kernel does not report one (statx STATX_DIOALIGN, Linux 6.1). */
#define AIO_MIN_BLOCK 512u
#define AIO_MAX_BLOCK 65536u
/* iocbs in flight per layer. */
#define AIO_QUEUE_DEPTH 128u

struct aio_state {
	int fd;
	bool is_blk;
	bool read_only;
	uint64_t size;
	uint32_t block_size;
	uint32_t mem_align; /* buffer address alignment for O_DIRECT */
	struct bks_aioq *q;
	/* What the file system refused once with EOPNOTSUPP. */
	bool no_punch, no_zero_range;
};

static bool power_of_two(uint32_t v)
{
	return v && !(v & (v - 1));
}

/* The O_DIRECT alignments the kernel reports, if it does. */
static void dio_align(int fd, uint32_t *offset_align, uint32_t *mem_align)
{
#ifdef STATX_DIOALIGN
	struct statx stx;

	if (statx(fd, "", AT_EMPTY_PATH, STATX_DIOALIGN, &stx) == 0 &&
	    (stx.stx_mask & STATX_DIOALIGN)) {
		*offset_align = stx.stx_dio_offset_align;
		*mem_align = stx.stx_dio_mem_align;
		return;
	}
#else
	(void)fd;
#endif
	*offset_align = 0;
	*mem_align = 0;
}

/* The block size O_DIRECT needs on the open image, and its check. */
static int probe(struct aio_state *s, const char *path, uint32_t dev_block,
		 struct bks_error *err)
{
	uint32_t off_align, mem_align;

	s->block_size = dev_block > AIO_MIN_BLOCK ? dev_block : AIO_MIN_BLOCK;
	dio_align(s->fd, &off_align, &mem_align);
	if (off_align > s->block_size)
		s->block_size = off_align;
	if (!power_of_two(s->block_size) || s->block_size > AIO_MAX_BLOCK)
		return bks_error_setmsg(
		    err, EINVAL,
		    "%s: O_DIRECT alignment %u is not a power of two in "
		    "512..65536; use sync:",
		    path, s->block_size);
	/* Unknown memory alignment: assume the strictest, the block. */
	s->mem_align =
	    mem_align && power_of_two(mem_align) ? mem_align : s->block_size;
	/* Its tail could be neither read nor written with O_DIRECT. */
	return bks_image_check_size(path, s->size, s->block_size, err);
}

static int aio_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct aio_state *s = state;
	const char *path = args->args;
	struct bks_image img;
	int r;

	(void)self;
	s->fd = -1;
	r = bks_image_open(
	    &img, path, (args->read_only ? O_RDONLY : O_RDWR) | O_DIRECT, err);
	if (r < 0)
		return r;
	s->fd = img.fd;
	s->is_blk = img.is_blk;
	s->size = img.size;
	r = probe(s, path, img.block_size, err);
	if (r < 0)
		goto out;
	s->read_only = args->read_only;
	r = bks_aioq_new(&s->q, args->loop, AIO_QUEUE_DEPTH, err);
	if (r < 0) {
		bks_error_prepend(err, "%s: ", path);
		goto out;
	}
out:
	if (r < 0) {
		close(s->fd);
		s->fd = -1;
	}
	return r;
}

/* The framework has drained the layer: nothing is queued or in flight. */
static void aio_close(void *state, struct bks_layer *self)
{
	struct aio_state *s = state;

	(void)self;
	bks_aioq_free(s->q);
	close(s->fd);
}

static int aio_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct aio_state *s = state;

	(void)self;
	info->size = s->size;
	info->block_size = s->block_size;
	info->max_io = 0; /* the kernel splits large iocbs itself */
	/* Larger ones are split by the framework: each piece is one
	 * fallocate or ioctl, so one call never covers 4 GiB. */
	info->max_discard = BKS_FILE_MAX_RANGE;
	info->max_write_zeroes = BKS_FILE_MAX_RANGE;
	/*
	 * A read-only layer still lists the writing ops, so that the
	 * framework refuses them with -EROFS (which says why), not with
	 * -EOPNOTSUPP.
	 */
	info->read_only = s->read_only;
	info->ops = BKS_OPF(BKS_OP_READ) | BKS_OPF(BKS_OP_WRITE) |
		    BKS_OPF(BKS_OP_FLUSH) | BKS_OPF(BKS_OP_DISCARD) |
		    BKS_OPF(BKS_OP_WRITE_ZEROES);
	info->can_fua = true;
	info->zero_no_hole = true;
	return 0;
}

/*
 * O_DIRECT buffers: address aligned to mem_align, length to block_size.
 * The framework has checked offset and total length already.
 */
static bool iov_aligned(const struct aio_state *s, const struct bks_req *req)
{
	uintptr_t bad = 0;

	for (int i = 0; i < req->iovcnt; i++)
		bad |= ((uintptr_t)req->iov[i].iov_base & (s->mem_align - 1)) |
		       (req->iov[i].iov_len & (s->block_size - 1));
	return bad == 0;
}

static int aio_rw(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct aio_state *s = state;

	(void)self;
	if (!iov_aligned(s, req))
		return -EINVAL;
	return bks_aioq_queue(s->q, s->fd, req);
}

/*
 * Through the queue as an aio fdsync, so that it does not block the loop;
 * the queue falls back to fdatasync() where the kernel lacks aio fdsync.
 */
static int aio_flush(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct aio_state *s = state;

	(void)self;
	return bks_aioq_queue(s->q, s->fd, req);
}

static int datasync(struct aio_state *s)
{
	return fdatasync(s->fd) < 0 ? -errno : 0;
}

static int blk_range_ioctl(struct aio_state *s, unsigned long cmd,
			   const struct bks_req *req)
{
	uint64_t range[2] = {req->offset, req->len};

	return ioctl(s->fd, cmd, range) < 0 ? -errno : 0;
}

/* fallocate(mode) on the request's range; remember EOPNOTSUPP in *no. */
static int falloc(struct aio_state *s, int mode, const struct bks_req *req,
		  bool *no)
{
	if (*no)
		return -EOPNOTSUPP;
	if (fallocate(s->fd, mode, (off_t)req->offset, (off_t)req->len) == 0)
		return 0;
	if (errno == EOPNOTSUPP)
		*no = true;
	return -errno;
}

/* Synchronous: see the top of the file. */
static int aio_discard(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct aio_state *s = state;
	int r;

	(void)self;
	if (s->is_blk)
		r = blk_range_ioctl(s, BLKDISCARD, req);
	else
		r = falloc(s, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, req,
			   &s->no_punch);
	/* A hint ("may read back as anything"): not doing it is doing it. */
	if (r == -EOPNOTSUPP)
		r = 0;
	bks_req_complete(req, r);
	return 0;
}

/* Synchronous: see the top of the file. */
static int aio_write_zeroes(void *state, struct bks_layer *self,
			    struct bks_req *req)
{
	struct aio_state *s = state;
	const int keep = FALLOC_FL_KEEP_SIZE;
	int r = -EOPNOTSUPP;

	(void)self;
	if (s->is_blk) {
		/* BLKZEROOUT never unmaps: it honours NO_HOLE too. */
		r = blk_range_ioctl(s, BLKZEROOUT, req);
	} else {
		/* A hole reads as zeroes and is the cheapest way there. */
		if (!(req->flags & BKS_REQ_NO_HOLE))
			r = falloc(s, FALLOC_FL_PUNCH_HOLE | keep, req,
				   &s->no_punch);
		/* Zeroed and allocated: what NO_HOLE asks for. */
		if (r == -EOPNOTSUPP)
			r = falloc(s, FALLOC_FL_ZERO_RANGE | keep, req,
				   &s->no_zero_range);
		/* Neither works (rare among O_DIRECT file systems): the
		 * caller can write zeroes itself; sync: has that fallback. */
	}
	/* fallocate and BLKZEROOUT have no per-call FUA: sync after. */
	if (r == 0 && (req->flags & BKS_REQ_FUA))
		r = datasync(s);
	bks_req_complete(req, r);
	return 0;
}

/* Holes and data of the file (SEEK_DATA/SEEK_HOLE), for NBD block status. */
static int aio_block_status(void *state, struct bks_layer *self,
			    struct bks_req *req)
{
	struct aio_state *s = state;
	size_t n = 0;
	int r;

	(void)self;
	r = bks_fd_extents(s->fd, s->is_blk, req->offset, req->len,
			   req->extents, req->extents_max, &n);
	req->nextents = (uint32_t)n;
	bks_req_complete(req, r);
	return 0;
}

/* The control socket's "aio" object: the queue's counters. */
static void aio_stats(void *state, struct bks_layer *self,
		      struct bks_stats_out *out)
{
	struct aio_state *s = state;
	struct bks_aioq_stats as;

	(void)self;
	bks_aioq_get_stats(s->q, &as);
	bks_stats_u64(out, "requests", as.requests);
	bks_stats_u64(out, "submitted", as.submitted);
	bks_stats_u64(out, "merged", as.merged);
	bks_stats_u64(out, "deferred", as.deferred);
	bks_stats_u64(out, "completed", as.completed);
	bks_stats_u64(out, "errors", as.errors);
	bks_stats_u64(out, "partial", as.partial);
	bks_stats_u64(out, "in_flight", as.in_flight);
}

/* What parsing needs of aio: (bks_driver_descs[] has it alone). */
#define AIO_DESC                                                               \
	{                                                                      \
		.name = "aio", .kind = BKS_SINK, .args_path = true,            \
		.usage = AIO_USAGE                                             \
	}

const struct bks_driver_desc bks_desc_aio = AIO_DESC;

const struct bks_driver bks_driver_aio = {
    .desc = AIO_DESC,
    .state_size = sizeof(struct aio_state),
    .open = aio_open,
    .close = aio_close,
    .info = aio_info,
    .read = aio_rw,
    .write = aio_rw,
    .flush = aio_flush,
    .discard = aio_discard,
    .write_zeroes = aio_write_zeroes,
    .block_status = aio_block_status,
    .stats = aio_stats,
};

int bks_aio_layer_stats(struct bks_layer *layer, struct bks_aioq_stats *out)
{
	struct aio_state *s;

	if (bks_layer_driver(layer) != &bks_driver_aio)
		return -EINVAL;
	s = bks_layer_state(layer);
	bks_aioq_get_stats(s->q, out);
	return 0;
}
