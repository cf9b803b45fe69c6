/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Stream (include/blkstack/job.h): pull the data of the sink's backing
 * line into the sink S while the guest keeps using it, then make S
 * stand alone (no backing file) and drop its parents.
 *
 * Each chunk that the scan saw in a parent (block status at S: depth 2
 * or more) is copied under a range lock (chain.h): no guest write to it
 * is in flight or starts while it is held.  Inside the lock block status
 * is asked again, and only the ranges S still does not hold are read at
 * S (through the parents) and written at S: a guest write that reached S
 * first is never overwritten by older data, and one that arrives later
 * waits for the unlock.  S receives only what it reads already, so the
 * chain reads the same all the time and after a crash at any point it is
 * consistent (S with some more of its parents' data).  At the end, with
 * the chain drained, S is flushed before its header is made to name no
 * backing file (else a crash could leave a header without a backing over
 * data not yet durable), then the parents leave the chain.
 */
#include <errno.h>
#include <stdint.h>

#include "job-internal.h"

static int stream_finish(struct bks_job *job, struct bks_error *err)
{
	char old[BKS_CHAIN_STR_MAX + 1];
	struct bks_layer *s = bks_chain_sink(job->chain);
	struct bks_layer *back;
	struct bks_error e2 = {0};
	int r;

	if (s != job->src)
		return bks_error_setmsg(err, EINVAL,
					"the sink changed during the stream");
	back = bks_layer_child(s, BKS_CHILD_BACKING);
	if (!back)
		return 0; /* nothing left to drop */
	if (job_layer_string(back, old, sizeof(old)) < 0)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"the backing image's name is too long");
	r = job_set_backing(s, NULL, err);
	if (r < 0)
		return bks_error_prepend(
		    err, "drop the backing file of %s: ", bks_layer_args(s));
	r = bks_chain_drop_images(job->chain, back, NULL, err);
	if (r < 0) {
		/* Both read the same; keep the disk as the memory. */
		(void)job_set_backing(s, old, &e2);
		return bks_error_prepend(err, "drop the parents: ");
	}
	return 0;
}

static const struct job_kind stream_kind = {
    .finish = stream_finish,
};

int job_stream_init(struct bks_job *job, struct bks_error *err)
{
	struct bks_layer *s = bks_chain_sink(job->chain);

	if (!s)
		return bks_error_setmsg(err, EINVAL, "stream: no sink");
	if (!bks_layer_child(s, BKS_CHILD_BACKING))
		return bks_error_setmsg(err, EOPNOTSUPP,
					"stream: the sink %s has no backing "
					"image",
					bks_layer_args(s));
	if (!job_can_set_backing(s))
		return bks_error_setmsg(err, EOPNOTSUPP,
					"stream: %s cannot rewrite its backing "
					"file",
					bks_layer_driver(s)->name);
	if (bks_next_info(s)->read_only)
		return bks_error_setmsg(err, EROFS,
					"stream: the sink %s is read-only",
					bks_layer_args(s));
	job->kind = &stream_kind;
	job->src = s;
	job->dst = s;
	job->depth_lo = 2;
	job->depth_hi = UINT32_MAX;
	job->use_lock = true;
	job->size = bks_next_info(s)->size;
	return 0;
}
