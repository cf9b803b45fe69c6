/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Commit and stream jobs of the worker: see worker-job.h.
 *
 * The job itself (libblkstack/job*.c) does the copying without blocking
 * the loop, holds itself while the chain is drained (a `pause` of the
 * worker holds it), and changes the chain at its end inside a drain of
 * its own.  What the worker adds: the images named by path, the refusals
 * (one job, not while paused, snapshotting or stopping), DIR/NAME/chain
 * recorded by commit_chain inside the final drain (a commit of the sink
 * changes the chain string), the chain string refreshed at the end, and
 * the result kept for `info` ("last_job").
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>

#include "worker-job.h"
#include "worker-live.h"
#include "worker-state.h"

struct worker_job {
	struct worker *w;
	struct bks_job *job;	/* the running job, or NULL */
	enum bks_job_kind kind; /* of the running job */
	bool recorded;		/* commit_chain wrote DIR/NAME/chain */
	void (*notify)(void *arg);
	void *notify_arg;
	/* The last ended job. */
	bool have_last;
	enum bks_job_kind last_kind;
	int last_result;
	char last_error[BKS_ERROR_MSG_MAX];
	uint64_t last_held_ns, last_done_bytes, last_elapsed_ns;
};

int worker_job_new(struct worker *w, struct bks_error *err)
{
	struct worker_job *wj = calloc(1, sizeof(*wj));

	if (!wj)
		return bks_error_set(err, ENOMEM, "allocate the job state");
	wj->w = w;
	w->job = wj;
	return 0;
}

void worker_job_free(struct worker *w)
{
	if (!w->job)
		return;
	/* The loop has stopped: a job still there can only be dropped. */
	if (w->job->job)
		worker_logf(w, LOG_ERR, "a job was still running at exit");
	free(w->job);
	w->job = NULL;
}

bool worker_job_running(const struct worker *w)
{
	return w->job && w->job->job;
}

void worker_job_set_notify(struct worker *w, void (*notify)(void *arg),
			   void *arg)
{
	if (!w->job)
		return;
	w->job->notify = notify;
	w->job->notify_arg = arg;
}

int worker_job_last_result(const struct worker *w)
{
	return w->job && w->job->have_last ? w->job->last_result : 1;
}

/* The image of w's chain whose path (args) is path, at or below from. */
static struct bks_layer *find_image(struct bks_layer *from, const char *path)
{
	for (struct bks_layer *l = from; l;
	     l = bks_layer_child(l, BKS_CHILD_BACKING))
		if (strcmp(bks_layer_args(l), path) == 0)
			return l;
	return NULL;
}

static int job_commit_chain(void *arg, const char *new_chain,
			    struct bks_error *err)
{
	struct worker_job *wj = arg;
	int rc = worker_state_chain_save(wj->w, new_chain, err);

	if (rc == 0)
		wj->recorded = true;
	return rc;
}

static void job_done(void *arg, int result, const struct bks_error *err)
{
	struct worker_job *wj = arg;
	struct worker *w = wj->w;
	struct bks_job_progress p;
	struct bks_error e2 = {0};

	bks_job_get_progress(wj->job, &p);
	wj->have_last = true;
	wj->last_kind = p.kind;
	wj->last_result = result;
	wj->last_held_ns = p.held_ns;
	wj->last_done_bytes = p.done_bytes;
	wj->last_elapsed_ns = p.elapsed_ns;
	snprintf(wj->last_error, sizeof(wj->last_error), "%s",
		 result == 0		? ""
		 : result == -ECANCELED ? "cancelled"
					: err->msg);
	bks_job_free(wj->job);
	wj->job = NULL;
	if (worker_chain_refresh(w) < 0)
		worker_logf(w, LOG_ERR, "%s: the chain string is too long",
			    bks_job_kind_name(p.kind));
	/*
	 * A failure after the record: the file must name what is served
	 * (the chain did not change, or the job says so).
	 */
	if (wj->recorded && result < 0 &&
	    worker_state_chain_save(w, w->chain_str, &e2) < 0)
		worker_logf(w, LOG_ERR, "%s: %s", bks_job_kind_name(p.kind),
			    e2.msg);
	wj->recorded = false;
	if (result == 0)
		worker_logf(
		    w, LOG_INFO,
		    "%s done: %llu bytes copied, I/O held %llu us; "
		    "serving %s",
		    bks_job_kind_name(p.kind), (unsigned long long)p.done_bytes,
		    (unsigned long long)(p.held_ns / 1000u), w->chain_str);
	else
		worker_logf(w, result == -ECANCELED ? LOG_INFO : LOG_ERR,
			    "%s %s: %s", bks_job_kind_name(p.kind),
			    result == -ECANCELED ? "cancelled" : "failed",
			    wj->last_error);
	if (wj->notify)
		wj->notify(wj->notify_arg);
	if (w->state == WORKER_STOPPING && w->job_stopped)
		w->job_stopped(w);
}

int worker_job_start(struct worker *w, enum bks_job_kind kind, const char *top,
		     const char *base, struct bks_error *err)
{
	struct worker_job *wj = w->job;
	const char *name = bks_job_kind_name(kind);
	struct bks_layer *sink, *t = NULL, *b = NULL;
	struct bks_job_config cfg = {0};
	int rc;

	if (!wj || !w->chain)
		return bks_error_setmsg(err, ENOSYS, "%s: not available", name);
	sink = bks_chain_sink(w->chain);
	if (w->state == WORKER_STOPPING)
		return bks_error_setmsg(err, ESHUTDOWN,
					"%s: the worker is stopping", name);
	if (w->state != WORKER_RUNNING)
		return bks_error_setmsg(err, EBUSY,
					"%s: the worker is %s (unpause first)",
					name, worker_state_name(w->state));
	if (wj->job)
		return bks_error_setmsg(err, EBUSY,
					"%s: a %s is running (one job at a "
					"time)",
					name, bks_job_kind_name(wj->kind));
	if (worker_live_busy(w))
		return bks_error_setmsg(
		    err, EBUSY, "%s: a snapshot or reopen is under way", name);
	if (w->read_only)
		return bks_error_setmsg(err, EROFS,
					"%s: the worker is read-only", name);
	if (top && strcmp(top, "-") == 0)
		top = NULL; /* "commit - BASE": the sink into BASE */
	if (kind == BKS_JOB_COMMIT) {
		t = top ? find_image(sink, top) : sink;
		if (!t)
			return bks_error_setmsg(err, ENOENT,
						"commit: %s is not an image "
						"of the chain",
						top);
		if (!bks_layer_child(t, BKS_CHILD_BACKING))
			return bks_error_setmsg(
			    err, EINVAL,
			    "commit: %s has no image below it to commit into",
			    bks_layer_args(t));
		if (base) {
			b = find_image(bks_layer_child(t, BKS_CHILD_BACKING),
				       base);
			if (!b)
				return bks_error_setmsg(
				    err,
				    find_image(sink, base) ? EINVAL : ENOENT,
				    "commit: %s is not an image below %s", base,
				    bks_layer_args(t));
		}
	} else if (!bks_layer_child(sink, BKS_CHILD_BACKING)) {
		return bks_error_setmsg(err, EINVAL,
					"stream: %s has no backing image",
					bks_layer_args(sink));
	}
	cfg.kind = kind;
	cfg.chain = w->chain;
	cfg.top = t == sink ? NULL : t;
	cfg.base = b;
	cfg.commit_chain = job_commit_chain;
	cfg.done = job_done;
	cfg.arg = wj;
	wj->kind = kind;
	wj->recorded = false;
	rc = bks_job_start(&wj->job, &cfg, err);
	if (rc < 0) {
		wj->job = NULL;
		bks_error_prepend(err, "%s: ", name);
		return rc;
	}
	worker_logf(
	    w, LOG_INFO, "%s started: %s into %s", name,
	    kind == BKS_JOB_COMMIT ? bks_layer_args(t) : "the backing chain",
	    kind == BKS_JOB_COMMIT
		? (b ? bks_layer_args(b)
		     : bks_layer_args(bks_layer_child(t, BKS_CHILD_BACKING)))
		: bks_layer_args(sink));
	return 0;
}

int worker_job_cancel(struct worker *w)
{
	if (!worker_job_running(w))
		return -ENOENT;
	bks_job_cancel(w->job->job);
	return 0;
}

void worker_job_json(const struct worker *w, struct json_writer *j)
{
	const struct worker_job *wj = w->job;

	json_key(j, "job");
	if (wj && wj->job) {
		struct bks_job_progress p;

		bks_job_get_progress(wj->job, &p);
		json_obj_begin(j);
		json_kv_str(j, "kind", bks_job_kind_name(p.kind));
		json_kv_str(j, "phase", bks_job_phase_name(p.phase));
		json_kv_u64(j, "done_bytes", p.done_bytes);
		json_kv_u64(j, "total_bytes", p.total_bytes);
		json_kv_u64(j, "passes", p.passes);
		json_kv_u64(j, "held_ms", p.held_ns / 1000000u);
		json_kv_u64(j, "elapsed_ms", p.elapsed_ns / 1000000u);
		json_obj_end(j);
	} else {
		json_null(j);
	}
	json_key(j, "last_job");
	if (wj && wj->have_last) {
		const char *res = "ok";

		if (wj->last_result == -ECANCELED)
			res = "cancelled";
		else if (wj->last_result < 0)
			res = strerrorname_np(-wj->last_result);
		json_obj_begin(j);
		json_kv_str(j, "kind", bks_job_kind_name(wj->last_kind));
		json_kv_str(j, "result", res ? res : "EIO");
		json_kv_str(j, "error", wj->last_error);
		json_kv_u64(j, "held_ms", wj->last_held_ns / 1000000u);
		json_kv_u64(j, "done_bytes", wj->last_done_bytes);
		json_kv_u64(j, "elapsed_ms", wj->last_elapsed_ns / 1000000u);
		json_obj_end(j);
	} else {
		json_null(j);
	}
}
