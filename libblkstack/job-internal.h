/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Private to the jobs (libblkstack/job*.c): the job, its copy slots, and
 * what a kind of job (commit, stream) plugs into the frame of job.c.
 *
 * The frame copies chunks: a bitmap says which chunks are to be copied
 * (the scan sets it, a commit's write watch sets it again), passes walk it
 * from start to end with up to `depth` slots in flight, and each slot
 * copies one chunk: block status at src for the chunk, then for each
 * extent the kind wants, a read at src and a write at dst (a zero extent:
 * write_zeroes, or a zeroed buffer where dst has none).  A pass ends when
 * every slot it started has finished, so no two copies of one chunk are
 * ever in flight at once (their writes to dst could land out of order).
 */
#ifndef BLKSTACK_JOB_INTERNAL_H
#define BLKSTACK_JOB_INTERNAL_H

#include <stdbool.h>
#include <stdint.h>
#include <sys/uio.h>

#include "blkstack/chain.h"
#include "blkstack/job.h"
#include "blkstack/loop.h"

#define JOB_CHUNK_DEFAULT (1u << 20)
/*
 * The grain the bitmap tracks (at most the chunk): what a guest write
 * marks to be copied again.  A slot copies a run of consecutive marked
 * grains, up to a chunk, so the first pass moves whole chunks while a
 * small guest write costs a re-copy of one grain, not of a chunk (with
 * 1 MiB grains, 4 KiB random writes re-dirty faster than any copy).
 */
#define JOB_GRAIN	  (64u << 10)
#define JOB_CHUNK_MAX	  (64u << 20)
#define JOB_DEPTH_DEFAULT 4u
#define JOB_DEPTH_MAX	  64u
/* Converging: go to the final switch with this many grains or fewer. */
#define JOB_FEW_CHUNKS 64u
/* ... or after this many passes. */
#define JOB_MAX_PASSES 16u
/* How often a paused job looks whether the drain is over. */
#define JOB_PAUSE_NS (20ull * 1000 * 1000)
/* Extents per block status answer: the scan's, a slot's. */
#define JOB_SCAN_EXT 256u
#define JOB_SLOT_EXT 64u

struct bks_job;

enum job_slot_step {
	SLOT_IDLE,
	SLOT_LOCK,   /* waiting for the range lock */
	SLOT_STATUS, /* block status of the rest of the chunk */
	SLOT_READ,   /* an extent read at src */
	SLOT_WRITE,  /* ... written at dst */
};

struct job_slot {
	struct bks_job *job;
	enum job_slot_step step;
	bool ready; /* the step finished (result): job.c goes on */
	int result;
	struct bks_req req;
	struct iovec iov;
	unsigned char *buf;  /* chunk bytes, aligned */
	uint64_t start, end; /* the chunk */
	uint64_t pos;	     /* the next byte to look at */
	/* The current block status answer, and the extent being copied. */
	struct bks_extent ext[JOB_SLOT_EXT];
	uint32_t next, n;
	uint64_t seg_off, seg_len;
	bool seg_zero;
	/* stream: the chunk is copied under a range lock */
	struct bks_range_lock lock;
	bool locked;
};

/* What a kind of job brings; called by job.c. */
struct job_kind {
	/*
	 * Optional: inside a drain before the scan (then the frame drains
	 * once at start).  Returns 0 or -errno with err.
	 */
	int (*prepare)(struct bks_job *job, struct bks_error *err);
	/*
	 * Required: inside the final drain, after the last copy and a
	 * flush of dst: change the chain.  Returns 0, or -errno with err
	 * and the chain (memory and disk) as it was.
	 */
	int (*finish)(struct bks_job *job, struct bks_error *err);
	/* Optional: inside a drain, after a failure or a cancel: undo
	 * prepare (only called if prepare succeeded). */
	void (*undo)(struct bks_job *job);
};

/* The frame's states (job.c). */
enum job_state {
	JS_SETUP,	 /* waiting for the setup drain */
	JS_SCAN,	 /* block status over the image */
	JS_COPY,	 /* a copy pass */
	JS_FINAL_WAIT,	 /* waiting to begin (or for) the final drain */
	JS_FINAL_COPY,	 /* drained: the last pass */
	JS_FINAL_FLUSH,	 /* drained: the flush of dst */
	JS_CLEANUP_WAIT, /* waiting for a drain to undo prepare */
	JS_ENDED,	 /* done is scheduled or ran */
};

struct bks_job {
	struct bks_job_config cfg;
	const struct job_kind *kind;
	struct bks_chain *chain;
	struct bks_loop *loop;
	enum job_state state;
	enum bks_job_phase phase;

	/* What is copied: block status and reads at src, writes at dst;
	 * an extent is wanted if depth_lo <= depth < depth_hi. */
	struct bks_layer *src, *dst;
	uint32_t depth_lo, depth_hi;
	bool use_lock;	  /* stream: each chunk under a range lock */
	bool dst_zeroes;  /* dst has write_zeroes */
	bool watch_dirty; /* commit of the sink: guest writes re-dirty */

	/* commit */
	struct bks_layer *top, *base;
	bool base_reopened; /* base made writable by prepare */
	struct bks_write_watch watch;
	bool watching;

	/* the chunks */
	uint64_t size, chunk, nchunks; /* chunk: the grain (JOB_GRAIN) */
	uint64_t span;		       /* bytes one slot copies at most */
	uint64_t *dirty;	       /* bitmap, nchunks bits */
	uint64_t ndirty;
	uint64_t cursor; /* the pass's next chunk */
	struct job_slot *slots;
	unsigned int nslots, busy;
	unsigned char *bufs;

	/* the scan, the flush */
	struct bks_req scan_req;
	struct bks_extent scan_ext[JOB_SCAN_EXT];
	uint64_t scan_pos;
	bool scan_busy, scan_ready;
	int scan_result;
	struct bks_req flush_req;
	bool flush_busy, flush_ready;
	int flush_result;

	/* ending */
	bool prepared; /* kind->prepare succeeded: undo on failure */
	bool in_drain; /* one drain of ours is begun */
	bool stop;     /* cancelled or failed: start nothing more */
	int result;
	struct bks_error err;

	/* progress */
	uint64_t done_bytes, total_bytes;
	unsigned int passes;
	uint64_t held_ns, started_ns, ended_ns, drain_ns;

	struct bks_defer kick;	  /* job_run(): all the work */
	struct bks_defer done_cb; /* calls cfg.done */
	struct bks_timer pause;	  /* re-check a drain we do not own */
};

/* job.c, for the kinds */
/* Record the first failure (-errno, with a formatted message); the job
 * stops.  Returns r. */
int job_fail(struct bks_job *job, int r, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Mark [offset, offset+len) to be copied (again). */
void job_mark(struct bks_job *job, uint64_t offset, uint64_t len);
/* The image whose backing child is l, or NULL. */
struct bks_layer *job_layer_above(struct bks_job *job, struct bks_layer *l);
/* True if below is in l's backing line, below l. */
bool job_below(struct bks_layer *l, struct bks_layer *below);
/* Steps from l down its backing line to below (1: below is l's backing
 * child), 0 if below is not there. */
unsigned int job_distance(struct bks_layer *l, struct bks_layer *below);
/* l as a one-layer chain string "name:args" (escaped), into buf.
 * Returns the length or -ENAMETOOLONG. */
int job_layer_string(struct bks_layer *l, char *buf, size_t size);
/* Call l's set_backing (drained): 0 or -errno with err. */
int job_set_backing(struct bks_layer *l, const char *backing,
		    struct bks_error *err);
/* True if l's driver can rewrite its backing file reference. */
bool job_can_set_backing(struct bks_layer *l);

/* job-commit.c, job-stream.c: check cfg and fill the kind's part of job
 * (src, dst, depths, ...).  Returns 0 or -errno with err. */
int job_commit_init(struct bks_job *job, struct bks_error *err);
int job_stream_init(struct bks_job *job, struct bks_error *err);

#endif /* BLKSTACK_JOB_INTERNAL_H */
