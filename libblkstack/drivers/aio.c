/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * aio:PATH -- a sink on a raw image file or a block device, with Linux
 * native aio and O_DIRECT.
 *
 * Reads, writes and flushes go through a bks_aioq (see aioq.h): batched
 * per loop iteration, merged when adjacent, completed from the loop.
 * Discard and write_zeroes are fallocate() or a BLKDISCARD/BLKZEROOUT
 * ioctl (image-file.h), which have no aio form and may take long (NBD
 * lets a client ask for 4 GiB at once): they run on the layer's helper
 * threads (offload.h), as do block status on a file (lseek SEEK_DATA and
 * SEEK_HOLE, which may read metadata from disk) and a flush where the
 * kernel has no aio fdsync (aioq.h), and complete from the loop.  Nothing
 * blocks the loop.
 *
 * Offloaded requests take one of AIO_JOBS jobs, embedded in the state;
 * when all are busy a request waits, in arrival order, on a list linked
 * through its owner_next, and takes the next job freed.
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
 * The image is opened with bks_image_open() (see image-file.h): anything but a
 * regular file or a block device, an empty image and one whose size is not
 * a multiple of block_size are refused -- the tail of such a file could be
 * neither read nor written with O_DIRECT.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#include <sys/uio.h>

#include "blkstack/aioq.h"
#include "blkstack/driver.h"
#include "blkstack/image-file.h"
#include "blkstack/offload.h"

#define AIO_USAGE                                                              \
	"aio:PATH (a raw image file or a block device, opened with O_DIRECT)"
/* Smallest block size, and the O_DIRECT alignment assumed for files when
 * the kernel does not report one (statx STATX_DIOALIGN, Linux 6.1). */
#define AIO_MIN_BLOCK 512u
#define AIO_MAX_BLOCK 65536u
/* iocbs in flight per layer. */
#define AIO_QUEUE_DEPTH 128u
/*
 * Helper threads per layer, and discards/write_zeroes running at once.
 * The pool has room for those jobs and for one flush per queue slot.
 */
#define AIO_THREADS 2u
#define AIO_JOBS    16u
/* How long close waits for a running job; never reached, as the chain
 * closes a layer only when nothing is in flight (see offload.h). */
#define AIO_CLOSE_WAIT_NS (5ull * 1000 * 1000 * 1000)

struct aio_state;

/* A discard, write_zeroes or block status on a helper thread. */
struct aio_job {
	struct bks_offload_job job;
	struct aio_state *s;
	struct bks_req *req;
	struct aio_job *next_free;
};

struct aio_state {
	struct bks_image img; /* with what fallocate refused */
	bool read_only;
	uint32_t block_size;
	uint32_t mem_align; /* buffer address alignment for O_DIRECT */
	struct bks_aioq *q;
	struct bks_offload *off;
	struct aio_job jobs[AIO_JOBS];
	struct aio_job *free_jobs;
	/* Requests waiting for a job, oldest first (through owner_next). */
	struct bks_req *wait_head, *wait_tail;
	/* For stats: requests run on a job, those that waited for one, and
	 * those waiting now. */
	uint64_t offloaded, offload_waited, offload_waiting;
};

static bool power_of_two(uint32_t v)
{
	return v && !(v & (v - 1));
}

/* The block size O_DIRECT needs on the open image, and its check. */
static int probe(struct aio_state *s, const char *path, uint32_t dev_block,
		 struct bks_error *err)
{
	uint32_t off_align, mem_align;

	s->block_size = dev_block > AIO_MIN_BLOCK ? dev_block : AIO_MIN_BLOCK;
	bks_image_dio_align(&s->img, &off_align, &mem_align);
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
	return bks_image_check_size(path, s->img.size, s->block_size, err);
}

static int aio_open(void *state, struct bks_layer *self,
		    const struct bks_open_args *args, struct bks_error *err)
{
	struct aio_state *s = state;
	const char *path = args->args;
	int r;

	(void)self;
	r = bks_image_open(&s->img, path,
			   (args->read_only ? O_RDONLY : O_RDWR) | O_DIRECT,
			   err);
	if (r < 0)
		return r;
	r = probe(s, path, s->img.block_size, err);
	if (r < 0)
		goto out;
	s->read_only = args->read_only;
	for (unsigned int i = AIO_JOBS; i-- > 0;) {
		s->jobs[i].s = s;
		s->jobs[i].next_free = s->free_jobs;
		s->free_jobs = &s->jobs[i];
	}
	r = bks_offload_new(&s->off, args->loop, AIO_THREADS,
			    AIO_JOBS + AIO_QUEUE_DEPTH, err);
	if (r == 0)
		r = bks_aioq_new(&s->q, args->loop, AIO_QUEUE_DEPTH,
				 args->io_engine, s->off, err);
	if (r < 0)
		bks_error_prepend(err, "%s: ", path);
out:
	if (r < 0) {
		bks_offload_free(s->off, 0);
		s->off = NULL;
		bks_image_close(&s->img);
	}
	return r;
}

/*
 * The framework has drained the layer: nothing is queued or in flight,
 * no job either (each belongs to a request).
 */
static void aio_close(void *state, struct bks_layer *self)
{
	struct aio_state *s = state;

	(void)self;
	bks_aioq_free(s->q);
	bks_offload_free(s->off, AIO_CLOSE_WAIT_NS);
	bks_image_close(&s->img);
}

static int aio_info(void *state, struct bks_layer *self, struct bks_info *info)
{
	struct aio_state *s = state;

	(void)self;
	/* The kernel splits large iocbs itself: no max_io. */
	bks_image_info(&s->img, s->block_size, s->read_only, info);
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
	return bks_aioq_queue(s->q, s->img.fd, req);
}

/*
 * Through the queue as an aio fdsync, so that it does not block the loop;
 * the queue falls back to fdatasync() where the kernel lacks aio fdsync.
 */
static int aio_flush(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct aio_state *s = state;

	(void)self;
	return bks_aioq_queue(s->q, s->img.fd, req);
}

/* ---- discard and write_zeroes, on a helper thread ------------------------ */

/* On a helper thread: the blocking call for j's request. */
static int job_run(struct bks_offload_job *job)
{
	struct aio_job *j = job->opaque;
	struct bks_image *img = &j->s->img;
	struct bks_req *req = j->req;
	int r;

	if (req->op == BKS_OP_BLOCK_STATUS)
		return bks_image_block_status(img, req);
	if (req->op == BKS_OP_DISCARD)
		return bks_image_discard(img, req->offset, req->len);
	/*
	 * write_zeroes.  Where the file system can neither punch nor
	 * ZERO_RANGE (rare among O_DIRECT file systems) it fails with
	 * -EOPNOTSUPP: the caller can write zeroes itself; sync: has that
	 * fallback.
	 */
	r = bks_image_zero(img, req->offset, req->len, req->flags);
	/* fallocate and BLKZEROOUT have no per-call FUA: sync after. */
	if (r == 0 && (req->flags & BKS_REQ_FUA))
		r = bks_image_datasync(img);
	return r;
}

static void job_done(struct bks_offload_job *job, int result);

/* Run req on job j; a submission the pool refuses fails req. */
static void job_start(struct aio_state *s, struct aio_job *j,
		      struct bks_req *req)
{
	int r;

	j->req = req;
	s->offloaded++;
	j->job.fn = job_run;
	j->job.done = job_done;
	j->job.opaque = j;
	r = bks_offload_submit(s->off, &j->job);
	if (r < 0) {
		/* Never with the pool sized for every job; say so anyway. */
		j->req = NULL;
		j->next_free = s->free_jobs;
		s->free_jobs = j;
		bks_req_complete(req, r);
	}
}

/* On the loop thread: j's request is done; j serves the next waiting. */
static void job_done(struct bks_offload_job *job, int result)
{
	struct aio_job *j = job->opaque;
	struct aio_state *s = j->s;
	struct bks_req *req = j->req, *next = s->wait_head;

	j->req = NULL;
	if (next) {
		s->wait_head = next->owner_next;
		if (!s->wait_head)
			s->wait_tail = NULL;
		next->owner_next = NULL;
		s->offload_waiting--;
		job_start(s, j, next);
	} else {
		j->next_free = s->free_jobs;
		s->free_jobs = j;
	}
	bks_req_complete(req, result);
}

/*
 * Discard, write_zeroes and block status: on a job now, or in turn when
 * one is free.
 */
static int aio_offload(void *state, struct bks_layer *self, struct bks_req *req)
{
	struct aio_state *s = state;
	struct aio_job *j = s->free_jobs;

	(void)self;
	if (j && !s->wait_head) {
		s->free_jobs = j->next_free;
		job_start(s, j, req);
		return 0;
	}
	req->owner_next = NULL;
	if (s->wait_tail)
		s->wait_tail->owner_next = req;
	else
		s->wait_head = req;
	s->wait_tail = req;
	s->offload_waited++;
	s->offload_waiting++;
	return 0;
}

/*
 * Holes and data of the file (SEEK_DATA/SEEK_HOLE) on a helper thread; a
 * block device is all data, answered at once (no system call).
 */
static int aio_block_status(void *state, struct bks_layer *self,
			    struct bks_req *req)
{
	struct aio_state *s = state;

	if (!s->img.is_blk)
		return aio_offload(state, self, req);
	bks_req_complete(req, bks_image_block_status(&s->img, req));
	return 0;
}

/*
 * The control socket's "aio" object: the queue's counters, and the
 * requests run on the helper threads (offloaded), those that waited for a
 * job (offload_waited) and those waiting now (offload_waiting).
 */
static void aio_stats(void *state, struct bks_layer *self,
		      struct bks_stats_out *out)
{
	struct aio_state *s = state;
	struct bks_aioq_stats as;

	(void)self;
	bks_aioq_get_stats(s->q, &as);
	bks_stats_str(out, "engine", bks_io_engine_name(bks_aioq_engine(s->q)));
	bks_stats_u64(out, "requests", as.requests);
	bks_stats_u64(out, "submitted", as.submitted);
	bks_stats_u64(out, "merged", as.merged);
	bks_stats_u64(out, "deferred", as.deferred);
	bks_stats_u64(out, "completed", as.completed);
	bks_stats_u64(out, "errors", as.errors);
	bks_stats_u64(out, "partial", as.partial);
	bks_stats_u64(out, "in_flight", as.in_flight);
	bks_stats_u64(out, "offloaded", s->offloaded);
	bks_stats_u64(out, "offload_waited", s->offload_waited);
	bks_stats_u64(out, "offload_waiting", s->offload_waiting);
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
    .discard = aio_offload,
    .write_zeroes = aio_offload,
    .block_status = aio_block_status,
    .stats = aio_stats,
};
