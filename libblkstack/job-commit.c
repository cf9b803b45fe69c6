/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Commit (include/blkstack/job.h): merge image T (the sink or a parent)
 * into an image B below it, while the guest keeps writing, then drop T
 * and the images between T and B from the chain.
 *
 * What is copied: every range that block status at T places in T or in
 * an image between T and B (depth 1 .. depth(B) - 1, counted from T),
 * read at T (the data the guest sees through T) and written at B.  B
 * changes only where T shadows it, so the chain reads the same all the
 * time, and after a crash at any point the chain on disk (still T over
 * B) is consistent.
 *
 * Guest writes racing the copy (T the sink): a write watch marks the
 * chunks of every top write that completes during the job.  A chunk's
 * bit is cleared before its copy reads T, so a write that completed
 * before the clear is in what the read sees, and one that completes after
 * it marks the chunk again: the next pass copies it again.  Passes are
 * barriers (job-internal.h): two copies of one chunk are never in flight
 * together, so an older copy's write can never land on B after a newer
 * one's.  The last pass runs with the chain drained (no guest write in
 * flight or arriving), then B is flushed, and only then does the chain
 * change: the new chain string is recorded (commit_chain) or the image
 * above T is made to name B (set_backing), then T leaves the chain.
 */
#include <errno.h>
#include <stdint.h>
#include <string.h>

#include "job-internal.h"

static void commit_watch(struct bks_write_watch *w, enum bks_op op,
			 uint64_t offset, uint64_t len, int result)
{
	(void)op;
	(void)result; /* a failed write may have written part of it */
	job_mark(w->arg, offset, len);
}

/* Inside the setup drain: B writable, the watch. */
static int commit_prepare(struct bks_job *job, struct bks_error *err)
{
	int r;

	if (bks_next_info(job->base)->read_only) {
		r = bks_layer_reopen_mode(job->base, false, err);
		if (r < 0)
			return bks_error_prepend(err,
						 "make the base writable: ");
		job->base_reopened = true;
	}
	if (job->watch_dirty) {
		job->watch.fn = commit_watch;
		job->watch.arg = job;
		bks_chain_watch_writes(job->chain, &job->watch);
		job->watching = true;
	}
	return 0;
}

static void commit_undo(struct bks_job *job)
{
	struct bks_error e = {0};

	if (job->watching) {
		bks_chain_unwatch_writes(job->chain, &job->watch);
		job->watching = false;
	}
	if (job->base_reopened) {
		/* On failure B stays writable, which changes nothing read. */
		(void)bks_layer_reopen_mode(job->base, true, &e);
		job->base_reopened = false;
	}
}

/* T the sink: record the new chain, then drop T. */
static int finish_sink(struct bks_job *job, struct bks_error *err)
{
	char s[BKS_CHAIN_STR_MAX + 1];
	struct bks_error e2 = {0};
	int r;

	if (!job->cfg.commit_chain)
		return bks_error_setmsg(err, EINVAL,
					"the top is the sink and there is no "
					"commit_chain callback");
	r = bks_chain_string(job->chain, job->base, s, sizeof(s));
	if (r < 0)
		return bks_error_set(err, -r, "the new chain string");
	r = job->cfg.commit_chain(job->cfg.arg, s, err);
	if (r < 0)
		return bks_error_prepend(err, "record the new chain %s: ", s);
	r = bks_chain_drop_images(job->chain, job->top, job->base, err);
	if (r < 0) {
		/* Give the owner the old chain back: it still serves. */
		if (bks_chain_string(job->chain, NULL, s, sizeof(s)) >= 0)
			(void)job->cfg.commit_chain(job->cfg.arg, s, &e2);
		return bks_error_prepend(err, "drop the top: ");
	}
	/* B is the sink now, writable: nothing to undo. */
	job->base_reopened = false;
	if (job->watching) {
		bks_chain_unwatch_writes(job->chain, &job->watch);
		job->watching = false;
	}
	return 0;
}

/* T a parent: the image above T names B, then T leaves. */
static int finish_middle(struct bks_job *job, struct bks_error *err)
{
	char name[BKS_CHAIN_STR_MAX + 1], old[BKS_CHAIN_STR_MAX + 1];
	struct bks_layer *above = job_layer_above(job, job->top);
	struct bks_error e2 = {0};
	int r;

	if (!above)
		return bks_error_setmsg(err, EINVAL,
					"the top is no longer in the chain");
	if (job_layer_string(job->base, name, sizeof(name)) < 0 ||
	    job_layer_string(job->top, old, sizeof(old)) < 0)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"an image name is too long");
	r = job_set_backing(above, name, err);
	if (r < 0)
		return bks_error_prepend(
		    err, "name the base %s above the top: ", name);
	r = bks_chain_drop_images(job->chain, job->top, job->base, err);
	if (r < 0) {
		/* Both names read the same; keep the disk as the memory. */
		(void)job_set_backing(above, old, &e2);
		return bks_error_prepend(err, "drop the top: ");
	}
	commit_undo(job); /* B is a parent again: read-only */
	return 0;
}

static int commit_finish(struct bks_job *job, struct bks_error *err)
{
	if (!job_below(job->top, job->base))
		return bks_error_setmsg(err, EINVAL,
					"the base is no longer below the top");
	/* Whether T is the sink now decides, not what it was at start. */
	if (job->top == bks_chain_sink(job->chain))
		return finish_sink(job, err);
	return finish_middle(job, err);
}

static const struct job_kind commit_kind = {
    .prepare = commit_prepare,
    .finish = commit_finish,
    .undo = commit_undo,
};

int job_commit_init(struct bks_job *job, struct bks_error *err)
{
	const struct bks_job_config *cfg = &job->cfg;
	struct bks_layer *sink = bks_chain_sink(job->chain);
	struct bks_layer *top = cfg->top ? cfg->top : sink;
	struct bks_layer *base;
	unsigned int dist;

	if (!sink)
		return bks_error_setmsg(err, EINVAL, "commit: no sink");
	if (top != sink && !job_below(sink, top))
		return bks_error_setmsg(err, EINVAL,
					"commit: the top is not an image of "
					"the chain");
	base = cfg->base ? cfg->base : bks_layer_child(top, BKS_CHILD_BACKING);
	if (!base)
		return bks_error_setmsg(err, EINVAL,
					"commit: the top %s has no backing "
					"image",
					bks_layer_args(top));
	dist = job_distance(top, base);
	if (dist == 0)
		return bks_error_setmsg(err, EINVAL,
					"commit: the base %s is not below the "
					"top %s",
					bks_layer_args(base),
					bks_layer_args(top));
	if (bks_next_info(base)->size < bks_next_info(top)->size)
		return bks_error_setmsg(
		    err, EINVAL, "commit: base %s: size %llu, the top's %llu",
		    bks_layer_args(base),
		    (unsigned long long)bks_next_info(base)->size,
		    (unsigned long long)bks_next_info(top)->size);
	if (top == sink && !cfg->commit_chain)
		return bks_error_setmsg(err, EINVAL,
					"commit: a commit of the sink needs a "
					"commit_chain callback");
	if (top != sink) {
		struct bks_layer *above = job_layer_above(job, top);

		if (!above || !job_can_set_backing(above))
			return bks_error_setmsg(
			    err, EOPNOTSUPP,
			    "commit: the image above %s cannot rewrite its "
			    "backing file",
			    bks_layer_args(top));
	}
	if (!bks_layer_driver(base)->reopen_prepare &&
	    bks_next_info(base)->read_only)
		return bks_error_setmsg(err, EOPNOTSUPP,
					"commit: the base %s cannot be made "
					"writable (%s: no reopen)",
					bks_layer_args(base),
					bks_layer_driver(base)->name);
	job->kind = &commit_kind;
	job->top = top;
	job->base = base;
	job->src = top;
	job->dst = base;
	job->depth_lo = 1;
	job->depth_hi = dist + 1;
	job->watch_dirty = top == sink;
	job->size = bks_next_info(top)->size;
	return 0;
}
