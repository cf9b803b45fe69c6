/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's blkif ring export: what `blkif-connect` sets up and
 * `blkif-disconnect` (or the worker's shutdown) takes down.  See
 * worker-blkif.h; the ring protocol itself is libblkstack's
 * (export/blkif/), the hypervisor's side its grant-xen.c.
 *
 * Lifetime of one ring (struct worker_blkif, w->blkif):
 *   connect     open gntdev and evtchn, bind the frontend's port, map the
 *               ring, make the export, watch the channel, start;
 *               anything that fails undoes what came before it.
 *   events      the channel's fd is readable: ack (take the pending
 *               event and unmask) first, then kick the export, so that an
 *               event during the intake is not lost.
 *   broken      the guest broke the ring's rules: the export stops it
 *               (bks_blkif_broken()); we log why, once, and info says
 *               "broken" until blkif-disconnect.
 *   disconnect  stop watching, shut the export down (what is in the
 *               chain is answered), then from our own deferred call (not
 *               inside the export's callback) free the export, unmap the
 *               ring, unbind and close, and call the waiter.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <syslog.h>

#include "bks-blkif-xen.h"
#include "dec.h"
#include "worker-blkif.h"

struct worker_blkif {
	struct worker *w;
	struct worker_blkif_args args;
	struct bks_blkif_xen *xen;
	void *sring;
	struct bks_blkif *rg;
	struct bks_watch ev;
	bool watching;
	bool started;
	bool broken;
	bool stopping;
	char why[BKS_ERROR_MSG_MAX + 64]; /* broken: the event's reason */
	struct bks_defer reap; /* frees it all after the export's done */
	void (*done)(void *arg);
	void *done_arg;
};

/* ---- parsing ------------------------------------------------------------- */

static int parse_refs(const char *s, struct worker_blkif_args *a,
		      struct bks_error *err)
{
	char buf[WORKER_BLKIF_MAX_REFS * 11 + 1], *save = NULL, *tok;
	unsigned int n = 0;

	if (strlen(s) >= sizeof(buf))
		return bks_error_setmsg(err, EINVAL,
					"blkif-connect: REFS is too long");
	strcpy(buf, s);
	if (!*buf || buf[strlen(buf) - 1] == ',' || buf[0] == ',' ||
	    strstr(buf, ",,"))
		return bks_error_setmsg(err, EINVAL,
					"blkif-connect: REFS must be grant "
					"references separated by commas");
	for (tok = strtok_r(buf, ",", &save); tok;
	     tok = strtok_r(NULL, ",", &save)) {
		if (n == WORKER_BLKIF_MAX_REFS)
			return bks_error_setmsg(err, EINVAL,
						"blkif-connect: more than %u "
						"ring pages",
						WORKER_BLKIF_MAX_REFS);
		if (dec_parse_u32(tok, UINT32_MAX, &a->refs[n]) < 0)
			return bks_error_setmsg(err, EINVAL,
						"blkif-connect: ring reference "
						"%u is not a number",
						n);
		n++;
	}
	if (n & (n - 1))
		return bks_error_setmsg(err, EINVAL,
					"blkif-connect: %u ring pages: not a "
					"power of two",
					n);
	a->order = (unsigned int)__builtin_ctz(n);
	return 0;
}

int worker_blkif_parse(int argc, char **argv, struct worker_blkif_args *out,
		       struct bks_error *err)
{
	struct worker_blkif_args a = {0};
	int rc;

	if (argc != 6)
		return bks_error_setmsg(err, EINVAL,
					"usage: blkif-connect DOMID PORT REFS "
					"PROTOCOL MODE");
	/* A guest's domain: not dom0, below DOMID_FIRST_RESERVED. */
	if (dec_parse_u32(argv[1], 0x7fef, &a.domid) < 0 || a.domid == 0)
		return bks_error_setmsg(
		    err, EINVAL,
		    "blkif-connect: DOMID must be a guest's "
		    "domain id (1 to 32751)");
	if (dec_parse_u32(argv[2], INT32_MAX, &a.port) < 0 || a.port == 0)
		return bks_error_setmsg(err, EINVAL,
					"blkif-connect: PORT must be an event "
					"channel (1 to %d)",
					INT32_MAX);
	rc = parse_refs(argv[3], &a, err);
	if (rc < 0)
		return rc;
	if (strcmp(argv[4], "-") == 0) {
		a.abi = BKS_BLKIF_ABI_X86_64;
	} else {
		rc = bks_blkif_abi_parse(argv[4], strlen(argv[4]), &a.abi, err);
		if (rc < 0) {
			bks_error_prepend(err, "blkif-connect: ");
			return rc;
		}
	}
	if (strcmp(argv[5], "r") && strcmp(argv[5], "w"))
		return bks_error_setmsg(err, EINVAL,
					"blkif-connect: MODE must be r or w");
	a.read_only = argv[5][0] == 'r';
	*out = a;
	return 0;
}

/* ---- one ring ------------------------------------------------------------ */

static void blkif_free(struct worker_blkif *b)
{
	if (!b)
		return;
	if (b->watching)
		bks_watch_del(&b->ev);
	bks_defer_cancel(&b->reap);
	if (b->rg)
		bks_export_free(bks_blkif_export(b->rg));
	if (b->sring)
		bks_blkif_xen_unmap_ring(b->xen, b->sring, b->args.order);
	bks_blkif_xen_close(b->xen);
	free(b);
}

static void on_event(struct bks_watch *watch, uint32_t events)
{
	struct worker_blkif *b = watch->opaque;
	int rc;

	(void)events;
	rc = bks_blkif_xen_ack(b->xen);
	if (rc < 0)
		worker_logf(b->w, LOG_ERR,
			    "blkif: domain %" PRIu32 ": event channel: %s",
			    b->args.domid, strerror(-rc));
	bks_blkif_kick(b->rg);
}

/* Tell blkif-watch (the ctl) that the ring left "connected". */
static void notify(struct worker *w, const char *state, const char *why)
{
	if (w->blkif_notify)
		w->blkif_notify(w->blkif_notify_arg, state, why);
}

static void on_broken(void *arg, const struct bks_error *why)
{
	struct worker_blkif *b = arg;
	b->broken = true;
	worker_logf(b->w, LOG_ERR,
		    "blkif: the ring of domain %" PRIu32
		    " is stopped: %s (blkif-disconnect takes it down)",
		    b->args.domid, why->msg);
	snprintf(b->why, sizeof(b->why),
		 "blkif: the ring of domain %" PRIu32 " is broken: %s",
		 b->args.domid, why->msg);
	notify(b->w, "broken", b->why);
}

/* The export is down: the rest goes from our own deferred call. */
static void export_down(void *arg)
{
	struct worker_blkif *b = arg;

	bks_defer_schedule(&b->reap);
}

static void reap(struct bks_defer *d)
{
	struct worker_blkif *b = d->opaque;
	struct worker *w = b->w;
	void (*done)(void *arg) = b->done;
	void *done_arg = b->done_arg;
	char msg[96];

	worker_logf(w, LOG_INFO, "blkif: domain %" PRIu32 ": disconnected",
		    b->args.domid);
	snprintf(msg, sizeof(msg),
		 "blkif: the ring of domain %" PRIu32 " was disconnected",
		 b->args.domid);
	w->blkif = NULL;
	blkif_free(b);
	notify(w, "none", msg);
	if (done)
		done(done_arg);
}

int worker_blkif_connect(struct worker *w, const struct worker_blkif_args *a,
			 struct bks_blkif_features *feat, struct bks_error *err)
{
	struct worker_blkif *b = NULL;
	struct bks_blkif_config cfg;
	int rc;

	if (w->state == WORKER_STOPPING)
		return bks_error_setmsg(
		    err, ESHUTDOWN, "blkif-connect: the worker is stopping");
	if (w->blkif)
		return bks_error_setmsg(
		    err, EBUSY,
		    "blkif-connect: the ring of domain "
		    "%" PRIu32 " is connected (blkif-disconnect first)",
		    w->blkif->args.domid);
	b = calloc(1, sizeof(*b));
	if (!b) {
		rc = bks_error_set(err, ENOMEM, "blkif-connect");
		goto out;
	}
	b->w = w;
	b->args = *a;
	bks_defer_init(w->loop, &b->reap, reap, b);
	rc = bks_blkif_xen_open(&b->xen, a->domid, a->port, err);
	if (rc == 0)
		rc = bks_blkif_xen_map_ring(b->xen, a->refs, a->order,
					    &b->sring, err);
	if (rc < 0)
		goto out;
	cfg = (struct bks_blkif_config){
	    .loop = w->loop,
	    .chain = w->chain,
	    .sring = b->sring,
	    .ring_order = a->order,
	    .abi = a->abi,
	    .read_only = a->read_only || w->read_only,
	    .ops = &bks_blkif_xen_ops,
	    .ops_state = b->xen,
	    .broken = on_broken,
	    .arg = b,
	};
	rc = bks_blkif_new(&b->rg, &cfg, err);
	if (rc < 0)
		goto out;
	rc = bks_watch_add(w->loop, &b->ev, bks_blkif_xen_fd(b->xen), EPOLLIN,
			   on_event, b);
	if (rc < 0) {
		bks_error_set(err, -rc, "blkif: watch the event channel");
		goto out;
	}
	b->watching = true;
	/* Takes whatever the frontend queued before we came. */
	rc = bks_export_start(bks_blkif_export(b->rg), err);
	if (rc < 0)
		goto out;
	bks_blkif_get_features(b->rg, feat);
	worker_logf(w, LOG_INFO,
		    "blkif: domain %" PRIu32 ": ring of %u page%s, event "
		    "channel %" PRIu32 ", %s%s",
		    a->domid, 1u << a->order, a->order ? "s" : "", a->port,
		    a->abi == BKS_BLKIF_ABI_X86_32 ? "x86_32-abi"
						   : "x86_64-abi",
		    cfg.read_only ? ", read-only" : "");
	w->blkif = b;
	b = NULL;
out:
	if (rc < 0)
		bks_error_prepend(err, "blkif-connect domain %" PRIu32 ": ",
				  a->domid);
	blkif_free(b);
	return rc;
}

int worker_blkif_disconnect(struct worker *w, void (*done)(void *arg),
			    void *arg)
{
	struct worker_blkif *b = w->blkif;

	if (!b)
		return WORKER_BLKIF_IDLE;
	b->done = done;
	b->done_arg = arg;
	if (b->stopping)
		return 0;
	b->stopping = true;
	if (b->watching) {
		bks_watch_del(&b->ev);
		b->watching = false;
	}
	worker_logf(w, LOG_INFO,
		    "blkif: domain %" PRIu32 ": disconnecting (finishing "
		    "what is in flight)",
		    b->args.domid);
	/* done may come before this returns: reap runs from the loop. */
	bks_export_shutdown(bks_blkif_export(b->rg), export_down, b);
	return 0;
}

void worker_blkif_free(struct worker *w)
{
	blkif_free(w->blkif);
	w->blkif = NULL;
}

void worker_blkif_set_notify(struct worker *w, worker_blkif_notify_fn *fn,
			     void *arg)
{
	w->blkif_notify = fn;
	w->blkif_notify_arg = fn ? arg : NULL;
}

void worker_blkif_event_json(struct json_writer *j, const char *name,
			     const char *state, const char *why)
{
	char msg[BKS_ERROR_MSG_MAX + WORKER_NAME_MAX + 64];

	snprintf(msg, sizeof(msg), "%s: %s", name, why);
	json_obj_begin(j);
	json_kv_str(j, "event", "blkif");
	json_kv_str(j, "blkif", state);
	json_kv_str(j, "error", msg);
	json_obj_end(j);
	json_raw(j, "\n", 1);
}

const char *worker_blkif_broken_why(const struct worker *w)
{
	return w->blkif && w->blkif->broken ? w->blkif->why : "";
}

const char *worker_blkif_state(const struct worker *w)
{
	const struct worker_blkif *b = w->blkif;

	if (!b)
		return "none";
	if (b->stopping)
		return "disconnecting";
	return b->broken ? "broken" : "connected";
}

void worker_blkif_stats_json(const struct worker *w, struct json_writer *j)
{
	const struct worker_blkif *b = w->blkif;
	struct bks_export_stats s = {0};

	if (!b) {
		json_null(j);
		return;
	}
	bks_export_get_stats(bks_blkif_export(b->rg), &s);
	json_obj_begin(j);
	json_kv_str(j, "state", worker_blkif_state(w));
	json_kv_u64(j, "domid", b->args.domid);
	json_kv_u64(j, "ring_pages", 1u << b->args.order);
	json_kv_u64(j, "ring_size", bks_blkif_ring_size(b->rg));
	json_kv_u64(j, "requests", s.requests);
	json_kv_u64(j, "errors", s.errors);
	json_kv_u64(j, "bytes_read", s.bytes_read);
	json_kv_u64(j, "bytes_written", s.bytes_written);
	json_kv_u64(j, "in_flight", s.in_flight);
	json_kv_str(j, "last_error", bks_blkif_last_error(b->rg));
	json_obj_end(j);
}
