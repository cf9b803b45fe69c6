/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Long live operations on an open chain: commit and stream.
 *
 * A job runs in the chain's loop (no threads of its own, it never
 * blocks).  It copies data between the images of the chain with
 * bks_layer_submit() (chain.h), from a pool of `depth` requests and
 * buffers allocated at start, while the guest keeps using the chain; it
 * pauses itself while somebody else drains the chain; at the end it
 * drains the chain once, briefly, to switch it (drop the merged or
 * pulled images).  Progress can be read at any time.
 *
 *   commit of image T into base B (B below T in T's backing line):
 *     every range allocated in T or in an image between T and B is
 *     copied from T (the data the guest sees through T) into B; guest
 *     writes that complete meanwhile are copied again; then, drained,
 *     the last dirty ranges are copied, B is flushed, the new chain is
 *     recorded (T the sink: commit_chain) or the image above T is made
 *     to name B as its backing file (set_backing), and T (and the images
 *     between T and B) leave the chain.
 *   stream into the sink S: every range S does not hold itself but a
 *     parent does is copied into S, under a range lock so that no guest
 *     write is overwritten by older data; then, drained, S is made to
 *     name no backing file (set_backing NULL) and its parents leave the
 *     chain.
 *
 * Crash story: at any point the images on disk are consistent and every
 * acknowledged guest write is present (commit writes into B only data
 * that T shadows; stream writes into S only data S reads through anyway);
 * starting the job again redoes the copy.
 *
 * All functions are called from the thread that runs the chain's loop.
 */
#ifndef BLKSTACK_JOB_H
#define BLKSTACK_JOB_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/chain.h"
#include "blkstack/driver.h"
#include "blkstack/error.h"

enum bks_job_kind {
	BKS_JOB_COMMIT,
	BKS_JOB_STREAM,
};

enum bks_job_phase {
	BKS_JOB_SCANNING,   /* block status: what is to be copied */
	BKS_JOB_COPYING,    /* the first pass over it */
	BKS_JOB_CONVERGING, /* commit: copying again what the guest wrote */
	BKS_JOB_SWITCHING,  /* drained: the last copy and the chain change */
	BKS_JOB_DONE,
	BKS_JOB_CANCELLED,
	BKS_JOB_FAILED,
};

/* "scanning", "copying", "converging", "switching", "done", "cancelled",
 * "failed"; "?" for any other value. */
const char *bks_job_phase_name(enum bks_job_phase phase);
/* "commit", "stream"; "?" for any other value. */
const char *bks_job_kind_name(enum bks_job_kind kind);

struct bks_job;

struct bks_job_config {
	enum bks_job_kind kind;
	/* Required: an open chain, on the loop the caller runs. */
	struct bks_chain *chain;
	/*
	 * Commit: the image merged down (the sink or a parent; NULL: the
	 * sink).  Stream: ignored (the sink).
	 */
	struct bks_layer *top;
	/*
	 * Commit: the image merged into (NULL: top's backing child); must
	 * be below top in top's backing line.  Stream: ignored (all of
	 * the sink's backing line is pulled up and dropped).
	 */
	struct bks_layer *base;
	/* Bytes per copy, 0: 1 MiB.  A multiple of the chain's block size,
	 * at most 64 MiB. */
	uint32_t chunk;
	/* Copies in flight, 0: 4; at most 64. */
	unsigned int depth;
	/*
	 * Required for a commit of the sink (the chain string changes),
	 * unused otherwise.  Called inside the final drain, after the data
	 * is all in base and flushed, before the chain changes in memory,
	 * with the new chain string (bks_chain_string(chain, base)): the
	 * owner records it (the worker: DIR/NAME/chain) so that a worker
	 * restarted after a crash opens the new chain.  Returns 0, or
	 * -errno with err set, which aborts the switch (the job fails, the
	 * chain stays as it was).
	 */
	int (*commit_chain)(void *arg, const char *new_chain,
			    struct bks_error *err);
	/*
	 * Required.  Called once, from the loop (never inside
	 * bks_job_start() or bks_job_cancel()), when the job has ended and
	 * holds nothing of the chain any more: result 0 (done), -ECANCELED
	 * (bks_job_cancel()), or -errno with err's message (err is valid
	 * during the call only; never NULL).  The job may be freed from
	 * inside done.
	 */
	void (*done)(void *arg, int result, const struct bks_error *err);
	void *arg; /* the owner's, for commit_chain and done */
};

struct bks_job_progress {
	enum bks_job_kind kind;
	enum bks_job_phase phase;
	uint64_t done_bytes;  /* copied so far (re-copies counted again) */
	uint64_t total_bytes; /* to copy: found by the scan, plus the
				 re-dirtied (it grows) */
	unsigned int passes;  /* copy passes (commit: converging) */
	uint64_t held_ns;     /* guest I/O held by the final switch
				 (0 until then) */
	uint64_t started_ns;  /* bks_now_ns() at bks_job_start() */
	uint64_t elapsed_ns;  /* since then (until the end, once ended) */
};

/*
 * Start a job as cfg says.  Checks cfg (kind, chain, top and base are
 * layers of chain that fit the kind, chunk and depth, the callbacks),
 * allocates everything the job needs, and starts it; the work happens
 * in later loop iterations.  Returns 0 with *out set, or -errno with err
 * set and nothing started: -EINVAL (a bad config: "commit: base is not
 * below top"), -EOPNOTSUPP (an image that cannot take part: stream of a
 * sink without parents, a layer whose driver has no set_backing where
 * one is needed), -ENOMEM.  done is never called for a job that did not
 * start.
 */
int bks_job_start(struct bks_job **out, const struct bks_job_config *cfg,
		  struct bks_error *err);

/*
 * Ask the job to stop.  It stops starting copies, waits for those in
 * flight, undoes what it set up (commit: base back to read-only if it
 * was a parent) and calls done(-ECANCELED) from the loop.  Once the
 * final switch has begun a cancel is too late: the job finishes (done
 * with 0 or the switch's error).  Harmless on a job that has ended or is
 * already cancelling.
 */
void bks_job_cancel(struct bks_job *job);

/* The job's progress now, into out.  Any time between start and free. */
void bks_job_get_progress(const struct bks_job *job,
			  struct bks_job_progress *out);

/* Free the job: only after its done callback ran (may be inside it). */
void bks_job_free(struct bks_job *job);

#endif /* BLKSTACK_JOB_H */
