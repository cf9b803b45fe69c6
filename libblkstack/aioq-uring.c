/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The file queue's io_uring engine (aioq-internal.h).
 *
 * One ring of the queue's depth, set up in bks_aioq_new().  A batch
 * becomes one SQE per slot (read/write for one buffer, readv/writev for
 * more, RWF_DSYNC for FUA, IORING_OP_FSYNC with IORING_FSYNC_DATASYNC for
 * flush) and ONE io_uring_submit() per deferred point.  Completions: the
 * loop watches the ring fd itself, which polls readable while CQEs wait
 * (io_uring_poll(), the same on 6.1 and 6.18), and they are reaped from
 * the CQ ring in memory, no syscall; overflowed CQEs (the kernel keeps
 * them, IORING_FEAT_NODROP) are flushed with io_uring_get_events().
 *
 * The kernel's errors come back per SQE as CQEs (-EBADF for a bad fd,
 * ...), so submit never refuses one slot.  When io_uring_submit() itself
 * fails (-EAGAIN, -EBUSY: out of memory, or CQ overflow) or takes fewer
 * SQEs than are in the ring, the rest stay in the SQ ring: they count as
 * taken, the engine says it is stalled, and the queue calls submit again
 * after the next completion or on its retry timer.  The SQ ring has room
 * for every slot, so a stalled ring never runs out of SQEs.
 *
 * A short transfer is not resubmitted: the queue completes the requests
 * beyond it with -EIO, as with libaio (aioq.h).
 *
 * The fds are not registered (io_uring_register_files): qcow2: and vhd:
 * swap the file under the same fd number with dup2() on reopen, which a
 * registered file would not follow; and it would save no syscall, only
 * an fget/fput per SQE in the kernel.
 *
 * The ring fd polls readable while CQEs wait on 6.1 as on 6.18 (the CQE
 * post wakes the ring's poll wait queue: cq_wait on 6.1, poll_wq later;
 * the lazy poll activation of later kernels is for DEFER_TASKRUN rings
 * only, not used here).  Completions of file I/O are posted by task work
 * on the submitting thread, which interrupts its epoll_wait() once
 * (EINTR, retried by the loop).
 */
#include <errno.h>
#include <liburing.h>
#include <stdlib.h>
#include <sys/epoll.h>

#include "aioq-internal.h"

/*
 * Memcheck does not see the kernel write an io_uring read's buffers (it
 * does for libaio's): tell it, so that valgrind runs of the worker stay
 * meaningful.  A no-op of a few instructions outside valgrind, and none
 * at all where its header is missing.
 */
#if defined(__has_include)
#if __has_include(<valgrind/memcheck.h>)
#include <valgrind/memcheck.h>
#define URING_MARK_DEFINED(p, n) VALGRIND_MAKE_MEM_DEFINED(p, n)
#endif
#endif
#ifndef URING_MARK_DEFINED
#define URING_MARK_DEFINED(p, n) ((void)(p), (void)(n))
#endif

/* A read of slot s transferred res bytes into its buffers. */
static void mark_read(const struct aioq_slot *s, long res)
{
	const struct iovec *iov = aioq_slot_iov(s);
	size_t left = res > 0 ? (size_t)res : 0;

	if (s->op != BKS_OP_READ)
		return;
	for (int i = 0; i < s->iovcnt && left > 0; i++) {
		size_t n = iov[i].iov_len < left ? iov[i].iov_len : left;

		URING_MARK_DEFINED(iov[i].iov_base, n);
		left -= n;
	}
}

struct uring_eng {
	struct io_uring ring;
	bool ring_ok;
};

/* Complete every CQE waiting (the caller holds the queue busy). */
static void reap(struct bks_aioq *q)
{
	struct uring_eng *e = q->eng;

	for (;;) {
		struct io_uring_cqe *cqe;
		unsigned int head, n = 0;

		io_uring_for_each_cqe(&e->ring, head, cqe)
		{
			struct aioq_slot *s = io_uring_cqe_get_data(cqe);

			n++;
			mark_read(s, (long)cqe->res);
			/* A callback may free the queue (not while busy):
			 * the ring stays until the caller lets go. */
			aioq_slot_done(q, s, (long)cqe->res);
		}
		io_uring_cq_advance(&e->ring, n);
		if (n > 0)
			continue;
		if (!io_uring_cq_has_overflow(&e->ring))
			break;
		/* Let the kernel move its overflowed CQEs in. */
		if (io_uring_get_events(&e->ring) < 0 ||
		    io_uring_cq_ready(&e->ring) == 0)
			break;
	}
}

static void on_ring(struct bks_watch *w, uint32_t events)
{
	struct bks_aioq *q = w->opaque;
	(void)events;

	aioq_enter(q);
	reap(q);
	aioq_reaped(q);
}

static void prep(struct io_uring_sqe *sqe, struct aioq_slot *s)
{
	const struct iovec *iov = aioq_slot_iov(s);

	switch (s->op) {
	case BKS_OP_READ:
		if (s->iovcnt == 1)
			io_uring_prep_read(sqe, s->fd, iov[0].iov_base,
					   (unsigned int)iov[0].iov_len,
					   s->offset);
		else
			io_uring_prep_readv(sqe, s->fd, iov,
					    (unsigned int)s->iovcnt, s->offset);
		break;
	case BKS_OP_WRITE:
		if (s->iovcnt == 1)
			io_uring_prep_write(sqe, s->fd, iov[0].iov_base,
					    (unsigned int)iov[0].iov_len,
					    s->offset);
		else
			io_uring_prep_writev(sqe, s->fd, iov,
					     (unsigned int)s->iovcnt,
					     s->offset);
		if (s->dsync)
			sqe->rw_flags = RWF_DSYNC;
		break;
	default: /* BKS_OP_FLUSH; bks_aioq_queue() let nothing else in */
		io_uring_prep_fsync(sqe, s->fd, IORING_FSYNC_DATASYNC);
		break;
	}
	io_uring_sqe_set_data(sqe, s);
}

static int uring_submit(struct bks_aioq *q, struct aioq_slot **batch, int n)
{
	struct uring_eng *e = q->eng;
	int r;

	for (int i = 0; i < n; i++) {
		struct io_uring_sqe *sqe = io_uring_get_sqe(&e->ring);

		/* Cannot happen (the ring has a place per slot); if it did,
		 * the kernel is out of resources for the rest. */
		if (!sqe) {
			n = i;
			break;
		}
		prep(sqe, batch[i]);
	}
	r = io_uring_submit(&e->ring);
	if (r < 0 || io_uring_sq_ready(&e->ring) > 0) {
		/* The SQEs stay in the ring: try again later. */
		q->engine_stalled = true;
		aioq_arm_retry(q);
	}
	return n;
}

static int uring_setup(struct bks_aioq *q, struct bks_error *err)
{
	struct uring_eng *e = calloc(1, sizeof(*e));
	int rc;

	if (!e)
		return bks_error_set(err, ENOMEM, "io_uring queue");
	q->eng = e;
	/* SUBMIT_ALL (5.18): a bad SQE does not stop the rest of the
	 * batch.  Without it (older kernels) they are submitted later. */
	rc = io_uring_queue_init(q->depth, &e->ring, IORING_SETUP_SUBMIT_ALL);
	if (rc == -EINVAL)
		rc = io_uring_queue_init(q->depth, &e->ring, 0);
	if (rc < 0)
		return bks_error_set(
		    err, -rc, "io_uring: io_uring_queue_init(%u)", q->depth);
	e->ring_ok = true;
	rc = bks_watch_add(q->loop, &q->watch, e->ring.ring_fd, EPOLLIN,
			   on_ring, q);
	if (rc < 0)
		return bks_error_set(err, -rc, "io_uring queue: watch ring fd");
	return 0;
}

static void uring_destroy(struct bks_aioq *q)
{
	struct uring_eng *e = q->eng;

	if (!e)
		return;
	if (e->ring_ok)
		io_uring_queue_exit(&e->ring);
	free(e);
	q->eng = NULL;
}

const struct aioq_engine bks_aioq_engine_uring = {
    .id = BKS_IO_ENGINE_URING,
    .setup = uring_setup,
    .destroy = uring_destroy,
    .submit = uring_submit,
};
