/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Snapshot and reopen of the running chain: see worker-live.h.
 *
 * Both go the same way: checks and the blocking preparation first (the
 * overlay is created before anything is held), then a hold of the NBD
 * export (bks_export_hold(): the chain parks new requests and we wait for
 * those in flight), a flush of the chain submitted to its top layer (not
 * parked: bks_layer_submit()), then the switch, done in one go on the
 * drained chain, and the end of the hold.  The time between the hold and
 * its end is what the guest's I/O was held: the reply's held_ms/held_us.
 *
 * The crash story: DIR/NAME/chain is written (atomically) after the
 * images on disk are ready for it and before the chain changes in memory;
 * a worker restarted after a crash opens it.  A snapshot's overlay
 * already names the old sink as its backing file when it is recorded;
 * after a crash between the record and the switch the new worker serves
 * the overlay, which is what the old one was about to do.
 */
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <syslog.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/export.h"
#include "blkstack/image-create.h"
#include "blkstack/log.h"
#include "worker-job.h"
#include "worker-live.h"
#include "worker-state.h"

enum live_kind {
	LIVE_SNAPSHOT,
	LIVE_REOPEN,
};

enum live_phase {
	LIVE_IDLE,
	LIVE_DRAINING, /* the hold is begun, waiting for the drain */
	LIVE_FLUSHING, /* drained, the flush of the chain in flight */
};

struct worker_live {
	struct worker *w;
	enum live_kind kind;
	enum live_phase phase;
	bool held;	  /* our hold of the export is on */
	bool created;	  /* we created overlay: removed on failure */
	bool stopping;	  /* the worker stops: end with -ESHUTDOWN */
	uint64_t hold_ns; /* when the hold began */
	char overlay[PATH_MAX];
	char format[8];
	/* The overlay's one-layer string, or the chain given to reopen. */
	char open_str[BKS_CHAIN_STR_MAX + 1];
	/* The chain string after the operation. */
	char new_chain[BKS_CHAIN_STR_MAX + 1];
	struct bks_req flush;
	struct bks_error err;
	worker_live_fn *done;
	void *arg;
};

static const char *live_name(const struct worker_live *live)
{
	return live->kind == LIVE_SNAPSHOT ? "snapshot" : "reopen";
}

int worker_live_new(struct worker *w, struct bks_error *err)
{
	struct worker_live *live = calloc(1, sizeof(*live));

	if (!live)
		return bks_error_set(err, ENOMEM, "allocate the live state");
	live->w = w;
	w->live = live;
	return 0;
}

void worker_live_free(struct worker *w)
{
	free(w->live);
	w->live = NULL;
}

bool worker_live_busy(const struct worker *w)
{
	return w->live && w->live->phase != LIVE_IDLE;
}

void worker_live_forget(struct worker *w, void *arg)
{
	if (w->live && w->live->arg == arg) {
		w->live->done = NULL;
		w->live->arg = NULL;
	}
}

/*
 * The end: the hold ends (the held time is measured before), a failed
 * snapshot's overlay file goes, and the caller hears the result.
 */
static void live_finish(struct worker_live *live, int rc)
{
	struct worker *w = live->w;
	struct worker_live_result res = {0};
	worker_live_fn *done = live->done;
	void *arg = live->arg;

	res.held_ns = bks_now_ns() - live->hold_ns;
	if (live->held) {
		live->held = false;
		bks_export_resume(w->nbd);
	}
	if (rc < 0 && live->created && unlink(live->overlay) < 0)
		worker_logf(w, LOG_ERR, "%s: remove %s: %m", live_name(live),
			    live->overlay);
	live->created = false;
	live->phase = LIVE_IDLE;
	live->done = NULL;
	live->arg = NULL;
	res.chain = w->chain_str;
	if (rc < 0)
		worker_logf(w, LOG_ERR, "%s failed: %s", live_name(live),
			    live->err.msg);
	else
		worker_logf(w, LOG_INFO, "%s: serving %s (I/O held %llu us)",
			    live_name(live), w->chain_str,
			    (unsigned long long)(res.held_ns / 1000u));
	if (done)
		done(arg, rc, &res, &live->err);
}

/* A one-layer chain string "name:args" of layer l, escaped. */
static int layer_string(struct bks_layer *l, char *buf, size_t size)
{
	struct bks_chain_spec spec = {.n = 1};

	spec.layers[0].desc = &bks_layer_driver(l)->desc;
	spec.layers[0].args = (char *)bks_layer_args(l);
	return bks_chain_format(&spec, buf, size);
}

/*
 * The chain string of chain (its own layers) with the sink replaced by
 * the one-layer string sink.  Returns the length or -errno.
 */
static int replace_sink(const char *chain, const char *sink, char *buf,
			size_t size, struct bks_error *err)
{
	struct bks_chain_spec spec = {0}, one = {0};
	int rc;

	rc = bks_chain_parse(chain, strlen(chain), &spec, err);
	if (rc < 0)
		goto out;
	rc = bks_chain_parse(sink, strlen(sink), &one, err);
	if (rc < 0)
		goto out;
	/* The spec owns its args: swap them, both specs free theirs. */
	{
		struct bks_layer_spec t = spec.layers[spec.n - 1];

		spec.layers[spec.n - 1] = one.layers[0];
		one.layers[0] = t;
	}
	rc = bks_chain_format(&spec, buf, size);
	if (rc < 0)
		bks_error_setmsg(err, -rc, "the new chain string is too long");
out:
	bks_chain_spec_free(&spec);
	bks_chain_spec_free(&one);
	return rc;
}

/* ---- the switch (drained) ------------------------------------------------ */

/* Every log: layer marks its dirty set (the old top's changes). */
static void mark_logs(struct worker_live *live)
{
	struct worker *w = live->w;

	for (struct bks_layer *l = bks_chain_top(w->chain); l;
	     l = bks_chain_next_layer(l)) {
		int rc;

		if (strcmp(bks_layer_driver(l)->name, "log") != 0)
			continue;
		rc = bks_log_mark(l);
		if (rc < 0)
			worker_logf(w, LOG_ERR,
				    "snapshot: mark the dirty log of layer "
				    "%u: %s",
				    bks_layer_index(l), strerror(-rc));
	}
}

static int open_chain(struct worker_live *live, struct bks_chain **out,
		      bool overlay)
{
	struct worker *w = live->w;

	return bks_chain_open_config(out, live->open_str,
				     &(const struct bks_chain_config){
					 .loop = w->loop,
					 .read_only = !overlay && w->read_only,
					 .state_dir = overlay ? NULL : w->dir,
					 .meta_cache = w->meta_cache,
					 .io_engine = w->io_engine,
					 .no_backing = overlay,
				     },
				     &live->err);
}

static int switch_snapshot(struct worker_live *live)
{
	struct worker *w = live->w;
	struct bks_layer *sink = bks_chain_sink(w->chain);
	struct bks_chain *ov = NULL;
	struct bks_error ignore = {0};
	bool made_ro = false, recorded = false;
	int rc;

	rc = open_chain(live, &ov, true);
	if (rc < 0) {
		bks_error_prepend(&live->err, "snapshot: open the overlay: ");
		goto out;
	}
	rc = bks_layer_reopen_mode(sink, true, &live->err);
	if (rc == -EOPNOTSUPP) {
		/*
		 * A driver without reopen ops (aio: on a raw file) stays
		 * open for writing; as a parent below the overlay it gets
		 * no writes (flushed above, drained).
		 */
		worker_logf(w, LOG_INFO,
			    "snapshot: the old top stays open read-write "
			    "(%s); nothing writes to it any more",
			    live->err.msg);
		bks_error_clear(&live->err);
		rc = 0;
	} else if (rc < 0) {
		bks_error_prepend(&live->err,
				  "snapshot: make the old top read-only: ");
		goto out;
	} else {
		made_ro = true;
	}
	rc = worker_state_chain_save(w, live->new_chain, &live->err);
	if (rc < 0) {
		bks_error_prepend(&live->err, "snapshot: ");
		goto out;
	}
	recorded = true;
	rc = bks_chain_insert_overlay(w->chain, &ov, &live->err);
	if (rc < 0) {
		bks_error_prepend(&live->err, "snapshot: insert the overlay: ");
		goto out;
	}
	mark_logs(live);
	if (worker_chain_refresh(w) < 0) {
		memcpy(w->chain_buf, live->new_chain, sizeof(w->chain_buf));
		w->chain_str = w->chain_buf;
	}
out:
	if (rc < 0 && recorded &&
	    worker_state_chain_save(w, w->chain_str, &ignore) < 0)
		worker_logf(w, LOG_ERR, "snapshot: %s", ignore.msg);
	if (rc < 0 && made_ro &&
	    bks_layer_reopen_mode(sink, false, &ignore) < 0)
		worker_logf(w, LOG_ERR,
			    "snapshot: the old top stays read-only: %s",
			    ignore.msg);
	if (ov)
		bks_chain_close(ov);
	return rc;
}

static int switch_reopen(struct worker_live *live)
{
	struct worker *w = live->w;
	struct bks_chain *other = NULL;
	struct bks_error ignore = {0};
	int rc;

	rc = open_chain(live, &other, false);
	if (rc < 0) {
		bks_error_prepend(&live->err, "reopen: open the new chain: ");
		goto out;
	}
	rc = bks_chain_swap(w->chain, other, &live->err);
	if (rc < 0) {
		bks_error_prepend(&live->err, "reopen: ");
		goto out;
	}
	/* other holds the old layers from here on. */
	rc = worker_state_chain_save(w, live->open_str, &live->err);
	if (rc < 0) {
		bks_error_prepend(&live->err, "reopen: ");
		if (bks_chain_swap(w->chain, other, &ignore) < 0) {
			/* Cannot happen (the same two trees); keep the new. */
			worker_logf(w, LOG_ERR, "reopen: swap back: %s",
				    ignore.msg);
			rc = 0;
		} else {
			goto out;
		}
	}
	if (worker_chain_refresh(w) < 0) {
		memcpy(w->chain_buf, live->open_str, sizeof(w->chain_buf));
		w->chain_str = w->chain_buf;
	}
out:
	if (other)
		bks_chain_close(other);
	return rc;
}

static void live_switch(struct worker_live *live)
{
	int rc;

	if (live->stopping) {
		bks_error_setmsg(&live->err, ESHUTDOWN,
				 "%s: the worker is stopping", live_name(live));
		live_finish(live, -ESHUTDOWN);
		return;
	}
	if (!bks_chain_is_drained(live->w->chain)) {
		bks_error_setmsg(&live->err, EBUSY,
				 "%s: the chain is not drained",
				 live_name(live));
		live_finish(live, -EBUSY);
		return;
	}
	rc = live->kind == LIVE_SNAPSHOT ? switch_snapshot(live)
					 : switch_reopen(live);
	live_finish(live, rc);
}

static void live_flushed(struct bks_req *req, int result)
{
	struct worker_live *live = req->opaque;

	if (live->phase != LIVE_FLUSHING)
		return;
	if (result < 0) {
		bks_error_setmsg(&live->err, -result, "%s: flush the chain: %s",
				 live_name(live), strerror(-result));
		live_finish(live, result);
		return;
	}
	live_switch(live);
}

static void live_drained(void *arg)
{
	struct worker_live *live = arg;
	struct worker *w = live->w;
	const struct bks_info *info = bks_chain_info(w->chain);

	if (live->phase != LIVE_DRAINING)
		return;
	if (info->read_only || !(info->ops & BKS_OPF(BKS_OP_FLUSH))) {
		live_switch(live);
		return;
	}
	/* The old top durable before anything changes. */
	live->phase = LIVE_FLUSHING;
	memset(&live->flush, 0, sizeof(live->flush));
	live->flush.op = BKS_OP_FLUSH;
	live->flush.done = live_flushed;
	live->flush.opaque = live;
	bks_layer_submit(bks_chain_top(w->chain), &live->flush);
}

/* ---- starting ------------------------------------------------------------ */

static int live_check(struct worker *w, const char *cmd, struct bks_error *err)
{
	if (!w->live || !w->chain || !w->nbd)
		return bks_error_setmsg(err, ENOSYS, "%s: not available", cmd);
	if (w->state == WORKER_STOPPING)
		return bks_error_setmsg(err, ESHUTDOWN,
					"%s: the worker is stopping", cmd);
	if (worker_live_busy(w))
		return bks_error_setmsg(err, EBUSY, "%s: a %s is under way",
					cmd, live_name(w->live));
	if (worker_job_running(w))
		return bks_error_setmsg(err, EBUSY,
					"%s: a job is running (cancel it "
					"first)",
					cmd);
	return 0;
}

/* Begin the hold; the rest comes from live_drained(). */
static int live_hold(struct worker_live *live, worker_live_fn *done, void *arg,
		     struct bks_error *err)
{
	int rc;

	bks_error_clear(&live->err);
	live->done = done;
	live->arg = arg;
	live->stopping = false;
	live->phase = LIVE_DRAINING;
	live->hold_ns = bks_now_ns();
	rc = bks_export_hold(live->w->nbd, live_drained, live);
	if (rc < 0) {
		live->phase = LIVE_IDLE;
		live->done = NULL;
		live->arg = NULL;
		return bks_error_setmsg(err, -rc, "%s: hold the I/O: %s",
					live_name(live), strerror(-rc));
	}
	live->held = true;
	return 0;
}

int worker_live_snapshot(struct worker *w, const char *overlay,
			 const char *format, worker_live_fn *done, void *arg,
			 struct bks_error *err)
{
	struct worker_live *live = w->live;
	struct bks_layer *sink;
	const char *sink_drv;
	char backing[BKS_CHAIN_STR_MAX + 1];
	struct stat st;
	int rc, n;

	rc = live_check(w, "snapshot", err);
	if (rc < 0)
		return rc;
	if (w->read_only)
		return bks_error_setmsg(err, EROFS,
					"snapshot: the worker is read-only");
	if (overlay[0] != '/' || strlen(overlay) >= sizeof(live->overlay))
		return bks_error_setmsg(err, EINVAL,
					"snapshot: the overlay must be an "
					"absolute path (shorter than %zu)",
					sizeof(live->overlay));
	sink = bks_chain_sink(w->chain);
	sink_drv = bks_layer_driver(sink)->name;
	if (!format)
		format = strcmp(sink_drv, "vhd") == 0 ? "vhd" : "qcow2";
	if (strcmp(format, "qcow2") != 0 && strcmp(format, "vhd") != 0)
		return bks_error_setmsg(err, EINVAL,
					"snapshot: format '%.32s': qcow2 or "
					"vhd",
					format);
	if (lstat(overlay, &st) == 0)
		return bks_error_setmsg(err, EEXIST,
					"snapshot: %s exists already", overlay);
	if (errno != ENOENT)
		return bks_error_set(err, errno, "snapshot: %s", overlay);
	n = layer_string(sink, backing, sizeof(backing));
	if (n < 0)
		return bks_error_setmsg(err, -n,
					"snapshot: the sink's string is too "
					"long");
	live->kind = LIVE_SNAPSHOT;
	strcpy(live->overlay, overlay);
	strcpy(live->format, format);
	{
		struct bks_chain_spec one = {.n = 1};

		one.layers[0].desc =
		    bks_driver_desc_lookup(format, strlen(format));
		one.layers[0].args = live->overlay;
		if (!one.layers[0].desc)
			return bks_error_setmsg(
			    err, EINVAL, "snapshot: no %s driver", format);
		n = bks_chain_format(&one, live->open_str,
				     sizeof(live->open_str));
		if (n < 0)
			return bks_error_setmsg(err, -n,
						"snapshot: the overlay's "
						"path is too long");
	}
	rc = replace_sink(w->chain_str, live->open_str, live->new_chain,
			  sizeof(live->new_chain), err);
	if (rc < 0) {
		bks_error_prepend(err, "snapshot: ");
		return rc;
	}
	/* Blocking, before anything is held. */
	rc = bks_image_create(overlay, format, backing, 0, err);
	if (rc < 0) {
		bks_error_prepend(err, "snapshot: create the overlay: ");
		return rc;
	}
	live->created = true;
	worker_logf(w, LOG_INFO, "snapshot: created %s (%s, backed by %s)",
		    overlay, format, backing);
	rc = live_hold(live, done, arg, err);
	if (rc < 0) {
		unlink(overlay);
		live->created = false;
	}
	return rc;
}

int worker_live_reopen(struct worker *w, const char *chain,
		       worker_live_fn *done, void *arg, struct bks_error *err)
{
	struct worker_live *live = w->live;
	struct bks_chain_spec spec = {0};
	size_t len = strlen(chain);
	int rc;

	rc = live_check(w, "reopen", err);
	if (rc < 0)
		return rc;
	if (len == 0 || len > BKS_CHAIN_STR_MAX)
		return bks_error_setmsg(err, EINVAL,
					"reopen: a chain string of 1 to %d "
					"bytes",
					BKS_CHAIN_STR_MAX);
	/* Refused here, with the parser's words, before anything is held. */
	rc = bks_chain_parse(chain, len, &spec, err);
	bks_chain_spec_free(&spec);
	if (rc < 0) {
		bks_error_prepend(err, "reopen: ");
		return rc;
	}
	live->kind = LIVE_REOPEN;
	memcpy(live->open_str, chain, len + 1);
	live->created = false;
	return live_hold(live, done, arg, err);
}

void worker_live_stop(struct worker *w)
{
	struct worker_live *live = w->live;

	if (!live || live->phase == LIVE_IDLE)
		return;
	live->stopping = true;
	if (live->phase == LIVE_DRAINING) {
		/* Its drained call may never come: the holds end now. */
		bks_error_setmsg(&live->err, ESHUTDOWN,
				 "%s: the worker is stopping", live_name(live));
		live_finish(live, -ESHUTDOWN);
	}
	/* LIVE_FLUSHING: live_flushed() ends it. */
}
