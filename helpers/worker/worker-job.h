/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's long operations (worker-job.c): commit and stream, run by
 * a bks_job (blkstack/job.h) on the worker's loop, one at a time, with
 * their progress and the last one's result in `info` and `stats`
 * (docs/control-protocol.txt, "commit", "stream", "cancel").
 */
#ifndef BLKSTACK_WORKER_JOB_H
#define BLKSTACK_WORKER_JOB_H

#include <stdbool.h>

#include "blkstack/error.h"
#include "blkstack/job.h"
#include "json.h"
#include "worker.h"

/* Allocate w->job (no job runs yet).  Returns 0 or -ENOMEM with err. */
int worker_job_new(struct worker *w, struct bks_error *err);
/* Free w->job; no job may run (after the loop has stopped). */
void worker_job_free(struct worker *w);

/* True while a job runs (from its start until its end was handled). */
bool worker_job_running(const struct worker *w);

/*
 * Start a job of kind.  Commit: top and base are image paths as the
 * chain names them (the args of the sink or of a parent), NULL: the sink,
 * and top's backing image.  Stream: both NULL.  Refused with -EBUSY
 * (another job, a snapshot or reopen under way, the worker paused or
 * pausing), -ESHUTDOWN (stopping), -EROFS (read-only worker), -ENOENT (no
 * such image), -EINVAL (base not below top, nothing below the sink), or
 * bks_job_start()'s error; err says why.  Returns 0: the job runs.
 */
int worker_job_start(struct worker *w, enum bks_job_kind kind, const char *top,
		     const char *base, struct bks_error *err);

/*
 * Cancel the running job: its end follows (the notify callback).
 * Returns 0, or -ENOENT if no job runs.
 */
int worker_job_cancel(struct worker *w);

/*
 * notify(arg) runs from the loop each time a job has ended (after its
 * result is in "last_job"); NULL forgets it.
 */
void worker_job_set_notify(struct worker *w, void (*notify)(void *arg),
			   void *arg);

/*
 * Write the members "job" (the running job's progress, or null) and
 * "last_job" (the last ended job's result, or null) into the object
 * being written on j.
 */
void worker_job_json(const struct worker *w, struct json_writer *j);

/* The last job's result: 0, -ECANCELED, -errno; 1 if none ended yet. */
int worker_job_last_result(const struct worker *w);

#endif /* BLKSTACK_WORKER_JOB_H */
