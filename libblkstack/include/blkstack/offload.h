/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Blocking calls off the loop: a small fixed pool of helper threads, each
 * running one blocking call at a time (fallocate, a BLKDISCARD/BLKZEROOUT
 * ioctl, fdatasync, lseek SEEK_DATA/SEEK_HOLE) and handing its result
 * back to the loop thread, where the job's done callback runs.  The loop
 * goes on serving everything else meanwhile.
 *
 * Threads, not io_uring.  io_uring has IORING_OP_FALLOCATE and
 * IORING_OP_FSYNC, but none for BLKZEROOUT (BLKDISCARD only as a uring
 * command since Linux 6.12) nor for lseek SEEK_DATA, so a thread pool
 * would be needed beside it anyway; the kernel runs those fallocate and
 * fsync ops on its own io-wq threads, so a ring gains nothing for them;
 * and io_uring is often unavailable where blkstack runs (the
 * kernel.io_uring_disabled sysctl, container seccomp profiles, Debian 12
 * ships no liburing in the build dependencies).  A pthread pool works on
 * every kernel and for any blocking call, at the cost of a context switch
 * per job, which is nothing next to a 4 GiB discard.
 *
 * How a result comes back: the thread puts the finished job on a done
 * list and writes an eventfd that the loop watches (struct bks_watch);
 * the loop's callback takes the jobs off in order and calls their done.
 * Nothing but the job's fn ever runs on a helper thread.
 *
 * No allocation after bks_offload_new(): a job is a struct bks_offload_job
 * the submitter owns (embedded in its request state or a pool it allocated
 * at open).  The queue is bounded: at most max_jobs jobs are queued,
 * running or finished and not yet delivered; one more is -EAGAIN.
 *
 * Shutdown, bounded: bks_offload_free() cancels the jobs not started,
 * waits at most wait_ns for the running ones, and gives up on what is
 * still running then (see there).  A user that drains first (the aio:
 * driver: the chain closes a layer only when nothing is in flight, and
 * each of its jobs belongs to a request in flight) never has a job left
 * at free, so the wait never happens.
 *
 * All functions are called from the loop thread.
 */
#ifndef BLKSTACK_OFFLOAD_H
#define BLKSTACK_OFFLOAD_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/error.h"
#include "blkstack/loop.h"

struct bks_offload;
struct bks_offload_job;

/*
 * Required.  Runs on a helper thread: the blocking call.  Returns 0 (or
 * a non-negative value) or -errno.  It may read the job and what the job
 * points at, which the submitter keeps unchanged until done; it must not
 * touch the loop or anything else the loop thread changes.
 */
typedef int bks_offload_fn(struct bks_offload_job *job);

/*
 * Required.  Runs on the loop thread, from the loop (never inside
 * bks_offload_submit()), once per accepted submission: with what fn
 * returned; or with -ECANCELED, from inside bks_offload_free(), for a job
 * that had not started.  The job is free again when done is called: done
 * may submit it (or others) again, or free the pool.
 */
typedef void bks_offload_done_fn(struct bks_offload_job *job, int result);

struct bks_offload_job {
	bks_offload_fn *fn;
	bks_offload_done_fn *done;
	void *opaque; /* the submitter's */

	/* Private to offload.c. */
	struct bks_offload_job *next;
	int result;
	bool busy; /* submitted, done not called yet */
};

struct bks_offload_stats {
	uint64_t submitted;	  /* jobs accepted */
	uint64_t completed;	  /* done called with fn's result */
	uint64_t errors;	  /* of those, fn returned -errno */
	uint64_t cancelled;	  /* done called with -ECANCELED */
	uint64_t refused;	  /* submissions refused with -EAGAIN */
	uint64_t outstanding;	  /* accepted, done not called yet */
	uint64_t outstanding_max; /* the most outstanding at once */
};

/*
 * Start threads helper threads (1..64) on loop, with room for max_jobs
 * jobs (1..65536).  The threads block every signal (signals stay the
 * loop thread's).  Returns 0, or -errno with err set.
 */
int bks_offload_new(struct bks_offload **out, struct bks_loop *loop,
		    unsigned int threads, unsigned int max_jobs,
		    struct bks_error *err);

/*
 * Queue job to run job->fn on a helper thread (fn, done and opaque set
 * by the caller), in submission order.  Returns 0 (done will be called),
 * -EAGAIN when max_jobs are outstanding, -EBUSY if job is outstanding
 * already, -EINVAL without fn or done, -ESHUTDOWN during free; on an
 * error done is not called.  Never blocks, never allocates.
 */
int bks_offload_submit(struct bks_offload *o, struct bks_offload_job *job);

/*
 * Stop the pool and free it (NULL: nothing).  Jobs not started are
 * cancelled (done with -ECANCELED); running ones are waited for, at most
 * wait_ns in all, and the finished ones' done is called with their
 * result, all from inside this call, finished ones first.  Returns 0; or
 * -ETIMEDOUT if a job was still running after wait_ns: it is abandoned,
 * its done never called, and its thread ends (and releases the pool's
 * last memory) when fn returns, so whatever that fn touches must outlive
 * it.  May be called from a done callback.
 */
int bks_offload_free(struct bks_offload *o, uint64_t wait_ns);

void bks_offload_get_stats(const struct bks_offload *o,
			   struct bks_offload_stats *out);

#endif /* BLKSTACK_OFFLOAD_H */
