/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The file request queue used by the aio:, qcow2: and vhd: drivers, on
 * one of two engines (io-engine.h): io_uring or libaio.
 *
 * Requests are queued during a loop iteration and submitted together at
 * the loop's deferred point, where adjacent requests of the same
 * direction and flags are merged into one vectored submission (an iocb, or an
 * SQE).  When the kernel queue (depth submissions) is full, requests wait on a
 * deferred list and are submitted as completions free slots.  Completions
 * arrive through an fd watched by the loop (libaio: an eventfd; io_uring:
 * the ring fd, reaped from the CQ ring without a syscall), and each merged
 * submission's result is split back to its requests.  Everything is allocated
 * in bks_aioq_new(): nothing allocates on the data path.
 */
#ifndef BLKSTACK_AIOQ_H
#define BLKSTACK_AIOQ_H

#include <stdint.h>

#include "blkstack/driver.h"
#include "blkstack/error.h"
#include "blkstack/io-engine.h"
#include "blkstack/loop.h"
#include "blkstack/offload.h"

/* Most buffers in a merged iocb (one request alone may have up to IOV_MAX). */
#define BKS_AIOQ_MAX_IOV 256
/* Largest merged iocb, in bytes. */
#define BKS_AIOQ_MAX_MERGE (4u << 20)

struct bks_aioq_stats {
	uint64_t requests;  /* requests queued */
	uint64_t submitted; /* iocbs / SQEs the kernel took */
	uint64_t merged;    /* requests that joined another's iocb */
	uint64_t deferred;  /* times a request waited for a free slot */
	uint64_t completed; /* requests completed */
	uint64_t errors;    /* requests completed with an error */
	uint64_t partial;   /* iocbs that transferred less than asked */
	uint64_t in_flight; /* iocbs in the kernel now */
};

struct bks_aioq;

/*
 * Create a queue of depth submissions on loop, on engine (AUTO: io_uring
 * when a ring can be set up, else libaio; a forced engine that cannot be
 * set up fails).  off (required) runs the fdatasync() that stands in for
 * aio fdsync where the kernel lacks it (libaio only, in practice); the
 * queue submits at most depth jobs to it at once, and off must outlive
 * the queue.  Required for every user; the drivers call it at open.
 * Returns 0, or -errno with err set naming the engine (-EAGAIN from
 * io_setup: raise /proc/sys/fs/aio-max-nr).
 */
int bks_aioq_new(struct bks_aioq **out, struct bks_loop *loop,
		 unsigned int depth, enum bks_io_engine engine,
		 struct bks_offload *off, struct bks_error *err);

/* The engine q uses: BKS_IO_ENGINE_URING or BKS_IO_ENGINE_LIBAIO, never
 * AUTO.  Optional; for reports. */
enum bks_io_engine bks_aioq_engine(const struct bks_aioq *q);

/* Free the queue.  No request may be queued or in flight. */
void bks_aioq_free(struct bks_aioq *q);

/*
 * Queue req (BKS_OP_READ or BKS_OP_WRITE; BKS_REQ_FUA becomes
 * RWF_DSYNC) against fd.  req is completed with bks_req_complete(): 0 on
 * a full transfer, -EIO on a short one (never resubmitted: the requests
 * of a merged submission that lie wholly within what was transferred
 * succeed, the others get -EIO), -errno on failure.  Uses
 * req->owner_next and req->owner_data.  Returns 0, or -EINVAL for an op
 * it does not do.
 *
 * BKS_OP_FLUSH is queued too, as an IO_CMD_FDSYNC iocb or an
 * IORING_OP_FSYNC (IORING_FSYNC_DATASYNC) SQE, never merged, so that a
 * flush does not block the loop.  A kernel or file system that
 * refuses it (-EINVAL; aio fdsync exists since Linux 4.18) gets one
 * fdatasync() on a helper thread of the offload pool instead, and every
 * later flush on this queue goes there at once, without trying the
 * kernel queue; it still takes a slot, and completes from the loop.
 */
int bks_aioq_queue(struct bks_aioq *q, int fd, struct bks_req *req);

void bks_aioq_get_stats(const struct bks_aioq *q, struct bks_aioq_stats *out);

#endif /* BLKSTACK_AIOQ_H */
