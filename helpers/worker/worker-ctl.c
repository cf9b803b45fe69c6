/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's control socket: a line protocol, one JSON reply per
 * command line (docs/control-protocol.txt).
 *
 * Everything runs on the worker's loop and nothing blocks: sockets are
 * non-blocking, a reply that does not fit in the socket waits in the
 * connection's output buffer (and the connection reads nothing more until
 * it has gone), and a `pause` answers from a callback when the worker is
 * quiesced.  Replies go out in the order of the commands: a connection
 * waiting for its pause reads no further command meanwhile.
 *
 * Limits: a connection that neither sends nor takes a byte for the idle
 * timeout (CTL_IDLE_TIMEOUT_MS; not while it waits for a pause) is
 * closed, and when the table is full a newcomer is not refused: the
 * connection idle longest is evicted to make room (ctl_evict()).  The
 * toolstack's own commands (info, shutdown for `blkstack-ctl destroy`,
 * pause) come on a fresh connection and are answered in one go, so they
 * are never starved by connections that idle.
 *
 * Lifetimes: connections are freed only from their own watch callback,
 * from their idle timer, from the `kick` deferred call, from the
 * accept callback (eviction), or by worker_ctl_free() -- never from
 * the pause callback, which may run inside ops->pause() or
 * ops->unpause() while a command of some connection is being handled.
 * The pause callback's argument is the ctl, which outlives every
 * connection; the connections waiting for the pause are found by their
 * flag, so a client that disconnects meanwhile is simply no longer there.
 */
#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <syslog.h>
#include <unistd.h>

#include "blkstack/log.h"
#include "json.h"
#include "worker-blkif.h"
#include "worker-ctl.h"
#include "worker-job.h"
#include "worker-live.h"

/* Longest command line, newline included; longer ones close the link. */
#define CTL_LINE_MAX 4096
/*
 * Most control connections at once (the socket is for tools, not crowds).
 * A newcomer to a full table evicts the connection idle longest.
 */
#define CTL_MAX_CONNS 64
/*
 * A connection that sends nothing and takes nothing of its replies for
 * this long is closed: an idle tool, or one that never reads.  Waiting
 * for a `pause` is not idleness.  --timeouts may shorten it (tests).
 */
#define CTL_IDLE_TIMEOUT_MS 30000u
/* Largest output buffer of a connection. */
#define CTL_OUT_MAX (1u << 20)
/*
 * Stop handling commands of a connection while this much output waits:
 * a client that sends without reading cannot make the worker buffer
 * without bound.  Well below CTL_OUT_MAX minus the largest reply.
 */
#define CTL_OUT_HIGH (64u * 1024)
/*
 * Most connections in blkif-watch at once (blkstack-xenbus keeps one):
 * they are never idle nor evicted, so they must not fill the table.
 */
#define CTL_MAX_WATCHES 4u
/* Most extents in one `dirty` reply (then "next" says where to go on). */
#define CTL_DIRTY_MAX 4096
/* Connections accepted per wake-up, so that a flood cannot starve I/O. */
#define CTL_ACCEPT_BATCH 16
/* Pause before accepting again after running out of fds or memory. */
#define CTL_ACCEPT_RETRY_NS (1000ull * 1000 * 1000)

struct ctl_conn {
	struct worker_ctl *ctl;
	struct ctl_conn *prev, *next;
	int fd;
	uid_t uid;
	struct bks_watch watch;
	struct bks_timer idle; /* the idle timeout */
	uint64_t active_ns;    /* last byte in or out */
	char in[CTL_LINE_MAX];
	size_t in_len;
	struct json_writer out;
	size_t out_off;	  /* bytes of out already sent */
	bool eof;	  /* the client sends nothing more */
	bool gone;	  /* the client is gone: drop the output too */
	bool close_after; /* close once the output has gone */
	bool pause_wait;  /* waiting for the worker's pause */
	bool op_wait;	  /* waiting for a snapshot, reopen or cancel */
	bool blkif_wait;  /* waiting for blkif-disconnect's end */
	bool blkif_watch; /* blkif-watch: kept for the ring's event */
	bool cancel_wait; /* ... for the end of the job it cancelled */
	bool kick;	  /* the `kick` deferred call has work for it */
};

struct worker_ctl {
	struct worker *w;
	const struct worker_ctl_ops *ops; /* up to the worker */
	int listen_fd;
	struct bks_watch accept_watch;
	struct bks_timer accept_retry;
	struct bks_defer kick;	   /* resume connections after a pause */
	struct bks_defer shutdown; /* ops->shutdown() after the reply */
	struct ctl_conn *conns;
	unsigned int nconns;
	bool pause_pending; /* our waiter is registered with ops->pause() */
	struct ctl_conn *live_conn; /* waits for the snapshot/reopen */
	struct bks_extent *extents; /* CTL_DIRTY_MAX, for `dirty` */
	uint64_t idle_ns;	    /* the idle timeout */
	unsigned int nwatch;	    /* connections in blkif-watch */
	/* Counters for `stats`. */
	uint64_t accepted, refused, evicted, timed_out;
};

/* Log a line through the worker. */
static void ctl_log(const struct worker_ctl *ctl, int prio, const char *fmt,
		    ...) __attribute__((format(printf, 3, 4)));
static void ctl_log(const struct worker_ctl *ctl, int prio, const char *fmt,
		    ...)
{
	va_list ap;

	va_start(ap, fmt);
	ctl->ops->log(ctl->w, prio, fmt, ap);
	va_end(ap);
}

/* ---- output -------------------------------------------------------------- */

/*
 * Reply {"ok":false,"error":"NAME: reason","errno":"EINVAL","errnum":22}:
 * code is the positive errno of the failure, by name (portable) and by
 * number (docs/control-protocol.txt, "Framing").  Used for refusals
 * before a connection exists too, hence the writer argument.
 */
static void __attribute__((format(printf, 4, 0)))
put_verror(struct json_writer *j, const struct worker *w, int code,
	   const char *fmt, va_list ap)
{
	char msg[BKS_ERROR_MSG_MAX + WORKER_NAME_MAX + 64];
	const char *ename;
	int n = snprintf(msg, sizeof(msg), "%s: ", w->name);

	if (n < 0 || (size_t)n >= sizeof(msg))
		n = 0;
	vsnprintf(msg + n, sizeof(msg) - (size_t)n, fmt, ap);
	if (code <= 0)
		code = EIO;
	ename = strerrorname_np(code);
	json_obj_begin(j);
	json_kv_bool(j, "ok", false);
	json_kv_str(j, "error", msg);
	if (ename)
		json_kv_str(j, "errno", ename);
	json_kv_u64(j, "errnum", (uint64_t)code);
	json_obj_end(j);
	json_raw(j, "\n", 1);
}

static void __attribute__((format(printf, 3, 4)))
reply_error(struct ctl_conn *c, int code, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	put_verror(&c->out, c->ctl->w, code, fmt, ap);
	va_end(ap);
}

/* {"ok":true} and the end of the line. */
static void reply_ok(struct ctl_conn *c)
{
	json_obj_begin(&c->out);
	json_kv_bool(&c->out, "ok", true);
	json_obj_end(&c->out);
	json_raw(&c->out, "\n", 1);
}

/*
 * End a reply begun at mark: add the newline, or if the writer failed
 * (out of memory, too big), replace the reply with an error.
 */
static void reply_end(struct ctl_conn *c, size_t mark)
{
	int rc;

	json_raw(&c->out, "\n", 1);
	rc = json_error(&c->out);
	if (rc == 0)
		return;
	json_rewind(&c->out, mark);
	reply_error(c, -rc, "reply: %s", strerror(-rc));
}

/*
 * After a reply begun at mark: if even an error reply could not be
 * written (out of memory), the client cannot get its answer in order:
 * drop the broken reply and close the connection.
 */
static void reply_check(struct ctl_conn *c, size_t mark)
{
	if (json_error(&c->out) == 0)
		return;
	json_rewind(&c->out, mark);
	c->close_after = true;
}

/* Send what the output buffer holds, as far as the socket takes it. */
static void conn_flush(struct ctl_conn *c)
{
	while (c->out_off < json_len(&c->out) && !c->gone) {
		ssize_t n = send(c->fd, c->out.buf + c->out_off,
				 json_len(&c->out) - c->out_off,
				 MSG_NOSIGNAL | MSG_DONTWAIT);

		if (n < 0) {
			if (errno == EINTR)
				continue;
			if (errno != EAGAIN && errno != EWOULDBLOCK)
				c->gone = true; /* EPIPE, ECONNRESET */
			break;
		}
		c->out_off += (size_t)n;
		c->active_ns = bks_now_ns();
	}
	if (c->out_off == json_len(&c->out) || c->gone) {
		json_reset(&c->out);
		c->out_off = 0;
	} else if (c->out_off > 0) {
		/* Keep the unsent tail at the start, so the buffer is reused.
		 */
		size_t left = json_len(&c->out) - c->out_off;

		memmove(c->out.buf, c->out.buf + c->out_off, left);
		json_rewind(&c->out, left);
		c->out_off = 0;
	}
}

static size_t out_pending(const struct ctl_conn *c)
{
	return json_len(&c->out) - c->out_off;
}

/*
 * Waiting for the worker (a pause, a snapshot, a cancel, the ring's
 * event of a blkif-watch): not idle, and not evicted.
 */
static bool conn_waiting(const struct ctl_conn *c)
{
	return c->pause_wait || c->op_wait || c->blkif_wait || c->blkif_watch;
}

/* ---- connections --------------------------------------------------------- */

static void conn_free(struct ctl_conn *c)
{
	struct worker_ctl *ctl = c->ctl;

	if (ctl->live_conn == c)
		ctl->live_conn = NULL; /* the operation goes on, unanswered */
	if (c->blkif_watch)
		ctl->nwatch--;
	bks_watch_del(&c->watch);
	bks_timer_cancel(&c->idle);
	close(c->fd);
	if (c->prev)
		c->prev->next = c->next;
	else
		ctl->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	ctl->nconns--;
	json_writer_free(&c->out);
	free(c);
}

/* ---- commands ------------------------------------------------------------ */

/* A decimal uint64_t, all of s.  Returns 0 or -EINVAL/-ERANGE. */
static int parse_u64(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return -EINVAL;
	for (; *s; s++) {
		if (*s < '0' || *s > '9')
			return -EINVAL;
		if (v > (UINT64_MAX - (uint64_t)(*s - '0')) / 10)
			return -ERANGE;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

static void cmd_info(struct ctl_conn *c)
{
	struct worker *w = c->ctl->w;
	struct json_writer *j = &c->out;
	const struct bks_info *info = NULL;
	struct bks_export_stats ns = {0};
	char path[PATH_MAX + 16];
	size_t mark = json_len(j);

	if (w->chain)
		info = bks_chain_info(w->chain);
	if (w->nbd)
		bks_export_get_stats(w->nbd, &ns);
	snprintf(path, sizeof(path), "%s/nbd.sock", w->dir);

	json_obj_begin(j);
	json_kv_bool(j, "ok", true);
	json_kv_str(j, "name", w->name);
	json_kv_str(j, "chain", w->chain_str);
	json_kv_u64(j, "size", info ? info->size : 0);
	json_kv_u64(j, "block_size", info ? info->block_size : 0);
	json_kv_bool(j, "read_only", w->read_only || (info && info->read_only));
	json_kv_str(j, "state", worker_state_name(w->state));
	json_kv_u64(j, "pid", (uint64_t)getpid());
	json_kv_u64(j, "uptime_s",
		    (bks_now_ns() - w->started_ns) / 1000000000u);
	json_kv_u64(j, "connections", ns.connections);
	json_kv_u64(j, "in_flight",
		    w->chain ? bks_chain_in_flight(w->chain) : 0);
	json_kv_u64(j, "oldest_request_ms",
		    worker_oldest_request_ms(w, bks_now_ns()));
	json_kv_bool(j, "started_paused", w->started_paused);
	json_kv_str(j, "nbd_socket", path);
	json_kv_str(j, "io_engine", bks_io_engine_name(w->io_engine));
	json_kv_str(j, "fuse_transport",
		    bks_fuse_transport_name(w->fuse_transport));
	json_kv_str(j, "blkif", worker_blkif_state(w));
	worker_job_json(w, j);
	json_key(j, "layers");
	json_arr_begin(j);
	for (struct bks_layer *l = w->chain ? bks_chain_top(w->chain) : NULL; l;
	     l = bks_chain_next_layer(l))
		json_str(j, bks_layer_driver(l)->name);
	json_arr_end(j);
	json_obj_end(j);
	reply_end(c, mark);
}

static void op_stats(struct json_writer *j, const char *name,
		     const struct bks_op_stats *s)
{
	json_key(j, name);
	json_obj_begin(j);
	json_kv_u64(j, "ops", s->ops);
	json_kv_u64(j, "bytes", s->bytes);
	json_kv_u64(j, "errors", s->errors);
	json_obj_end(j);
}

/* The drivers' own counters (their stats op) as JSON, under the layer. */
static void stats_u64(struct bks_stats_out *out, const char *key, uint64_t v)
{
	json_kv_u64(out->arg, key, v);
}

static void stats_str(struct bks_stats_out *out, const char *key, const char *v)
{
	json_kv_str(out->arg, key, v);
}

static void stats_begin(struct bks_stats_out *out, const char *key)
{
	json_key(out->arg, key);
	json_obj_begin(out->arg);
}

static void stats_end(struct bks_stats_out *out)
{
	json_obj_end(out->arg);
}

static void driver_stats(struct json_writer *j, struct bks_layer *l)
{
	struct bks_stats_out out = {
	    .u64 = stats_u64,
	    .str = stats_str,
	    .begin = stats_begin,
	    .end = stats_end,
	    .arg = j,
	};

	bks_layer_emit_stats(l, &out);
}

static void cmd_stats(struct ctl_conn *c)
{
	struct worker *w = c->ctl->w;
	struct json_writer *j = &c->out;
	struct bks_export_stats ns = {0};
	struct bks_chain_stats cs = {0};
	size_t mark = json_len(j);
	uint64_t now = bks_now_ns();

	json_obj_begin(j);
	json_kv_bool(j, "ok", true);

	json_key(j, "worker");
	json_obj_begin(j);
	json_kv_str(j, "state", worker_state_name(w->state));
	json_kv_u64(j, "pauses", w->pauses);
	json_kv_u64(j, "paused_ms", w->paused_ns / 1000000u);
	/* The pause under way is not in paused_ms yet: say how long it is. */
	if (w->state == WORKER_PAUSING || w->state == WORKER_PAUSED)
		json_kv_u64(j, "pause_ms",
			    now > w->pause_start
				? (now - w->pause_start) / 1000000u
				: 0);
	json_kv_u64(j, "uptime_s", (now - w->started_ns) / 1000000000u);
	json_kv_bool(j, "started_paused", w->started_paused);
	json_kv_u64(j, "log_dropped",
		    w->syslog ? bks_syslog_dropped(w->syslog) : 0);
	/* "chain" at the top is the chain's counters: the string is here. */
	json_kv_str(j, "chain", w->chain_str);
	json_kv_str(j, "io_engine", bks_io_engine_name(w->io_engine));
	json_obj_end(j);
	worker_job_json(w, j);

	if (w->nbd)
		bks_export_get_stats(w->nbd, &ns);
	if (w->chain)
		bks_chain_get_stats(w->chain, &cs);
	/*
	 * in_flight, held and holding are the chain's now (a pause is its
	 * drain: requests in it, parked in all, parked now), under the keys
	 * they had when the NBD server kept them.
	 */
	json_key(j, "nbd");
	json_obj_begin(j);
	json_kv_u64(j, "connections", ns.connections);
	json_kv_u64(j, "connections_total", ns.connections_total);
	json_kv_u64(j, "refused", ns.refused);
	json_kv_u64(j, "dropped", ns.dropped);
	json_kv_u64(j, "requests", ns.requests);
	json_kv_u64(j, "errors", ns.errors);
	json_kv_u64(j, "bytes_read", ns.bytes_read);
	json_kv_u64(j, "bytes_written", ns.bytes_written);
	json_kv_u64(j, "in_flight", cs.in_flight);
	json_kv_u64(j, "held", cs.parked_total);
	json_kv_u64(j, "holding", cs.parked);
	json_obj_end(j);
	/* --fuse-mount's export: its own counters, or null. */
	json_key(j, "fuse");
	if (w->fuse) {
		struct bks_export_stats fs = {0};

		bks_export_get_stats(w->fuse, &fs);
		json_obj_begin(j);
		json_kv_bool(j, "mounted", fs.connections > 0);
		json_kv_str(j, "transport",
			    bks_fuse_transport_name(
				bks_fuse_export_transport(w->fuse)));
		json_kv_u64(j, "requests", fs.requests);
		json_kv_u64(j, "errors", fs.errors);
		json_kv_u64(j, "bytes_read", fs.bytes_read);
		json_kv_u64(j, "bytes_written", fs.bytes_written);
		json_kv_u64(j, "in_flight", fs.in_flight);
		json_kv_u64(j, "buffer_bytes", fs.buffer_bytes);
		json_obj_end(j);
	} else {
		json_null(j);
	}
	/* The guest's ring (blkif-connect): its counters, or null. */
	json_key(j, "blkif");
	worker_blkif_stats_json(w, j);

	/* The connection limits of both sockets (docs: "Connection limits"). */
	json_key(j, "limits");
	json_obj_begin(j);
	json_key(j, "nbd");
	json_obj_begin(j);
	json_kv_u64(j, "evicted", ns.evicted);
	json_kv_u64(j, "timed_out", ns.timed_out);
	json_kv_u64(j, "buffer_bytes", ns.buffer_bytes);
	json_obj_end(j);
	json_key(j, "control");
	json_obj_begin(j);
	json_kv_u64(j, "connections", c->ctl->nconns);
	json_kv_u64(j, "connections_total", c->ctl->accepted);
	json_kv_u64(j, "refused", c->ctl->refused);
	json_kv_u64(j, "evicted", c->ctl->evicted);
	json_kv_u64(j, "timed_out", c->ctl->timed_out);
	json_obj_end(j);
	json_obj_end(j);

	json_key(j, "chain");
	json_obj_begin(j);
	json_kv_u64(j, "in_flight",
		    w->chain ? bks_chain_in_flight(w->chain) : 0);
	json_kv_u64(j, "retries", w->chain ? bks_chain_retries(w->chain) : 0);
	json_kv_u64(j, "oldest_request_ms", worker_oldest_request_ms(w, now));
	json_obj_end(j);

	json_key(j, "layers");
	json_arr_begin(j);
	for (struct bks_layer *l = w->chain ? bks_chain_top(w->chain) : NULL; l;
	     l = bks_chain_next_layer(l)) {
		struct bks_layer_stats ls;

		bks_layer_get_stats(l, &ls);
		json_obj_begin(j);
		json_kv_u64(j, "index", bks_layer_index(l));
		json_kv_str(j, "driver", bks_layer_driver(l)->name);
		json_kv_u64(j, "in_flight", ls.in_flight);
		json_key(j, "ops");
		json_obj_begin(j);
		for (int op = 0; op < BKS_OP_COUNT; op++)
			op_stats(j, bks_op_name(op), &ls.op[op]);
		json_obj_end(j);
		driver_stats(j, l);
		json_obj_end(j);
	}
	json_arr_end(j);
	json_obj_end(j);
	reply_end(c, mark);
}

/* The reply to a pause waiter, rc from ops->pause's callback. */
static void reply_pause(struct ctl_conn *c, int rc)
{
	struct worker *w = c->ctl->w;
	size_t mark = json_len(&c->out);

	if (rc == -ESHUTDOWN ||
	    (rc == -ECANCELED && w->state == WORKER_STOPPING)) {
		reply_error(c, ESHUTDOWN,
			    "pause cancelled: the worker is stopping");
		return;
	}
	if (rc == -ECANCELED) {
		reply_error(c, ECANCELED, "pause cancelled by unpause");
		return;
	}
	if (rc < 0) {
		reply_error(c, -rc, "pause: %s", strerror(-rc));
		return;
	}
	json_obj_begin(&c->out);
	json_kv_bool(&c->out, "ok", true);
	json_kv_str(&c->out, "state", worker_state_name(w->state));
	json_obj_end(&c->out);
	reply_end(c, mark);
}

/*
 * ops->pause()'s callback: answer every connection waiting for the
 * pause.  It may run inside ops->pause()/ops->unpause() while some
 * connection is handling a command, so it frees nothing and handles no
 * command itself: it queues the replies and lets `kick` send them.
 */
static void ctl_pause_done(void *arg, int rc)
{
	struct worker_ctl *ctl = arg;

	ctl->pause_pending = false;
	for (struct ctl_conn *c = ctl->conns; c; c = c->next) {
		size_t mark = json_len(&c->out);

		if (!c->pause_wait)
			continue;
		c->pause_wait = false;
		reply_pause(c, rc);
		reply_check(c, mark);
		c->kick = true;
	}
	bks_defer_schedule(&ctl->kick);
}

static void cmd_pause(struct ctl_conn *c)
{
	struct worker_ctl *ctl = c->ctl;
	int rc;

	ctl_log(ctl, LOG_INFO, "control: pause (uid %u)", (unsigned int)c->uid);
	c->pause_wait = true;
	/* One waiter in the worker serves every connection that asks. */
	if (ctl->pause_pending)
		return;
	ctl->pause_pending = true;
	rc = ctl->ops->pause(ctl->w, ctl_pause_done, ctl);
	if (rc < 0) {
		/* Refused without calling back: only this one was waiting. */
		ctl->pause_pending = false;
		c->pause_wait = false;
		if (rc == -ESHUTDOWN)
			reply_error(c, ESHUTDOWN,
				    "pause: the worker is stopping");
		else
			reply_error(c, -rc, "pause: %s", strerror(-rc));
	}
}

static void cmd_unpause(struct ctl_conn *c)
{
	struct worker *w = c->ctl->w;
	int rc;

	ctl_log(c->ctl, LOG_INFO, "control: unpause (uid %u)",
		(unsigned int)c->uid);
	rc = c->ctl->ops->unpause(w);
	if (rc == -ESHUTDOWN)
		reply_error(c, ESHUTDOWN, "unpause: the worker is stopping");
	else if (rc < 0)
		reply_error(c, -rc, "unpause: %s", strerror(-rc));
	else
		reply_ok(c);
}

/* The topmost log: layer, or NULL with an error replied. */
static struct bks_layer *find_log(struct ctl_conn *c, const char *cmd)
{
	struct worker *w = c->ctl->w;
	struct bks_layer *log =
	    w->chain ? bks_chain_find(w->chain, "log") : NULL;

	if (!log)
		reply_error(c, EOPNOTSUPP, "%s: the chain has no log: layer",
			    cmd);
	return log;
}

static void cmd_dirty(struct ctl_conn *c, int argc, char **argv)
{
	struct worker_ctl *ctl = c->ctl;
	struct json_writer *j = &c->out;
	struct bks_layer *log;
	uint64_t start = 0, size, end = 0;
	size_t n = 0, mark = json_len(j);
	int rc;

	if (argc > 2) {
		reply_error(c, EINVAL, "usage: dirty [START]");
		return;
	}
	log = find_log(c, "dirty");
	if (!log)
		return;
	size = bks_next_info(log)->size;
	if (argc == 2 && (parse_u64(argv[1], &start) < 0 || start > size)) {
		reply_error(
		    c, EINVAL,
		    "dirty: bad start '%.64s' (a byte offset up to %" PRIu64
		    ")",
		    argv[1], size);
		return;
	}
	rc = bks_log_dirty(log, start, ctl->extents, CTL_DIRTY_MAX, &n);
	if (rc < 0) {
		reply_error(c, -rc, "dirty: %s", strerror(-rc));
		return;
	}
	json_obj_begin(j);
	json_kv_bool(j, "ok", true);
	json_kv_u64(j, "block_size", (uint64_t)bks_log_block_size(log));
	json_key(j, "extents");
	json_arr_begin(j);
	for (size_t i = 0; i < n; i++) {
		json_arr_begin(j);
		json_u64(j, ctl->extents[i].offset);
		json_u64(j, ctl->extents[i].length);
		json_arr_end(j);
		end = ctl->extents[i].offset + ctl->extents[i].length;
	}
	json_arr_end(j);
	/* A full reply may have more behind it; a short one is the end. */
	json_key(j, "next");
	if (n == CTL_DIRTY_MAX && end < size)
		json_u64(j, end);
	else
		json_null(j);
	json_obj_end(j);
	reply_end(c, mark);
}

static void cmd_clear_dirty(struct ctl_conn *c, int argc, char **argv)
{
	struct json_writer *j = &c->out;
	struct bks_layer *log;
	uint64_t off = 0, len = UINT64_MAX;
	size_t mark = json_len(j);
	int rc;

	if (argc != 1 && argc != 3) {
		reply_error(c, EINVAL, "usage: clear-dirty [OFFSET LENGTH]");
		return;
	}
	log = find_log(c, "clear-dirty");
	if (!log)
		return;
	if (argc == 3 &&
	    (parse_u64(argv[1], &off) < 0 || parse_u64(argv[2], &len) < 0)) {
		reply_error(c, EINVAL, "clear-dirty: bad range '%.32s %.32s'",
			    argv[1], argv[2]);
		return;
	}
	/*
	 * No range after a snapshot's mark: the frozen set (what the old
	 * top holds, backed up by now); what was written since stays.
	 */
	if (argc == 1 && bks_log_marked(log))
		rc = bks_log_clear_frozen(log);
	else
		rc = bks_log_clear(log, off, len);
	if (rc < 0) {
		reply_error(
		    c, -rc, "clear-dirty %" PRIu64 " %" PRIu64 ": %s", off, len,
		    rc == -EINVAL ? "offset beyond the disk" : strerror(-rc));
		return;
	}
	ctl_log(c->ctl, LOG_INFO,
		"control: clear-dirty %" PRIu64 " %" PRIu64 " (uid %u)", off,
		len, (unsigned int)c->uid);
	json_obj_begin(j);
	json_kv_bool(j, "ok", true);
	json_kv_u64(j, "dirty_bytes", (uint64_t)bks_log_dirty_bytes(log));
	json_obj_end(j);
	reply_end(c, mark);
}

/* ---- live operations: snapshot, reopen, commit, stream, cancel ---------- */

/*
 * The end of a snapshot or reopen (worker-live.h): answer the connection
 * that asked, if it is still there.  From the loop, but possibly inside a
 * command's handling (an operation ended by a shutdown): like the pause
 * callback, it only queues the reply and lets `kick` go on.
 */
static void ctl_live_done(void *arg, int rc,
			  const struct worker_live_result *res,
			  const struct bks_error *err)
{
	struct worker_ctl *ctl = arg;
	struct ctl_conn *c = ctl->live_conn;
	size_t mark;

	ctl->live_conn = NULL;
	if (!c)
		return;
	mark = json_len(&c->out);
	c->op_wait = false;
	if (rc < 0) {
		reply_error(c, -rc, "%s", err->msg);
	} else {
		json_obj_begin(&c->out);
		json_kv_bool(&c->out, "ok", true);
		json_kv_str(&c->out, "chain", res->chain);
		json_kv_u64(&c->out, "held_ms", res->held_ns / 1000000u);
		json_kv_u64(&c->out, "held_us", res->held_ns / 1000u);
		json_obj_end(&c->out);
		reply_end(c, mark);
	}
	reply_check(c, mark);
	c->kick = true;
	bks_defer_schedule(&ctl->kick);
}

/* Hand a started (rc 0) or refused operation's reply to c. */
static void live_started(struct ctl_conn *c, int rc,
			 const struct bks_error *err)
{
	if (rc < 0) {
		reply_error(c, -rc, "%s", err->msg);
		return;
	}
	c->op_wait = true;
	c->ctl->live_conn = c;
}

static void cmd_snapshot(struct ctl_conn *c, int argc, char **argv)
{
	struct worker_ctl *ctl = c->ctl;
	struct bks_error err = {0};
	int rc;

	if (argc < 2 || argc > 3) {
		reply_error(c, EINVAL, "usage: snapshot OVERLAY [qcow2|vhd]");
		return;
	}
	bks_sanitize_line(argv[1]);
	ctl_log(ctl, LOG_INFO, "control: snapshot %.256s%s%.16s (uid %u)",
		argv[1], argc == 3 ? " " : "", argc == 3 ? argv[2] : "",
		(unsigned int)c->uid);
	rc = worker_live_snapshot(ctl->w, argv[1], argc == 3 ? argv[2] : NULL,
				  ctl_live_done, ctl, &err);
	live_started(c, rc, &err);
}

static void cmd_reopen(struct ctl_conn *c, const char *chain)
{
	struct worker_ctl *ctl = c->ctl;
	struct bks_error err = {0};
	char shown[BKS_CHAIN_STR_MAX + 1];
	int rc;

	snprintf(shown, sizeof(shown), "%s", chain);
	bks_sanitize_line(shown);
	ctl_log(ctl, LOG_INFO, "control: reopen %.512s (uid %u)", shown,
		(unsigned int)c->uid);
	rc = worker_live_reopen(ctl->w, chain, ctl_live_done, ctl, &err);
	live_started(c, rc, &err);
}

static void cmd_job(struct ctl_conn *c, enum bks_job_kind kind, int argc,
		    char **argv)
{
	struct worker_ctl *ctl = c->ctl;
	struct json_writer *j = &c->out;
	struct bks_error err = {0};
	size_t mark = json_len(j);
	int rc;

	if (kind == BKS_JOB_COMMIT && argc > 3) {
		reply_error(c, EINVAL, "usage: commit [TOP [BASE]]");
		return;
	}
	if (kind == BKS_JOB_STREAM && argc > 1) {
		reply_error(c, EINVAL, "stream takes no arguments");
		return;
	}
	for (int i = 1; i < argc; i++)
		bks_sanitize_line(argv[i]);
	ctl_log(ctl, LOG_INFO, "control: %s%s%.256s%s%.256s (uid %u)",
		bks_job_kind_name(kind), argc > 1 ? " " : "",
		argc > 1 ? argv[1] : "", argc > 2 ? " " : "",
		argc > 2 ? argv[2] : "", (unsigned int)c->uid);
	rc = worker_job_start(ctl->w, kind, argc > 1 ? argv[1] : NULL,
			      argc > 2 ? argv[2] : NULL, &err);
	if (rc < 0) {
		reply_error(c, -rc, "%s", err.msg);
		return;
	}
	json_obj_begin(j);
	json_kv_bool(j, "ok", true);
	json_kv_str(j, "job", bks_job_kind_name(kind));
	json_obj_end(j);
	reply_end(c, mark);
}

/* A job ended (worker-job.h's notify): answer the cancels waiting. */
static void ctl_job_ended(void *arg)
{
	struct worker_ctl *ctl = arg;
	int res = worker_job_last_result(ctl->w);
	bool any = false;

	for (struct ctl_conn *c = ctl->conns; c; c = c->next) {
		size_t mark = json_len(&c->out);

		if (!c->cancel_wait)
			continue;
		c->cancel_wait = false;
		c->op_wait = false;
		json_obj_begin(&c->out);
		json_kv_bool(&c->out, "ok", true);
		/* A cancel too late (the switch had begun) finds it done. */
		json_kv_str(&c->out, "result",
			    res == 0		? "ok"
			    : res == -ECANCELED ? "cancelled"
						: "failed");
		json_obj_end(&c->out);
		reply_end(c, mark);
		reply_check(c, mark);
		c->kick = true;
		any = true;
	}
	if (any)
		bks_defer_schedule(&ctl->kick);
}

static void cmd_cancel(struct ctl_conn *c)
{
	ctl_log(c->ctl, LOG_INFO, "control: cancel (uid %u)",
		(unsigned int)c->uid);
	if (worker_job_cancel(c->ctl->w) < 0) {
		reply_error(c, ENOENT, "cancel: no job is running");
		return;
	}
	/* The reply comes when the job has stopped (ctl_job_ended). */
	c->op_wait = true;
	c->cancel_wait = true;
}

/* ---- the blkif ring (worker-blkif.h) --------------------------------------
 */

static void cmd_blkif_connect(struct ctl_conn *c, int argc, char **argv)
{
	struct worker_ctl *ctl = c->ctl;
	struct bks_blkif_features f;
	struct worker_blkif_args a;
	struct bks_error err = {0};
	struct json_writer *j = &c->out;
	size_t mark = json_len(j);
	int rc;

	rc = worker_blkif_parse(argc, argv, &a, &err);
	if (rc == 0) {
		ctl_log(ctl, LOG_INFO,
			"control: blkif-connect domain %u, %u ring page%s "
			"(uid %u)",
			(unsigned int)a.domid, 1u << a.order,
			a.order ? "s" : "", (unsigned int)c->uid);
		rc = worker_blkif_connect(ctl->w, &a, &f, &err);
	}
	if (rc < 0) {
		ctl_log(ctl, LOG_ERR, "control: %s", err.msg);
		reply_error(c, -rc, "%s", err.msg);
		return;
	}
	json_obj_begin(j);
	json_kv_bool(j, "ok", true);
	json_kv_u64(j, "sectors", f.sectors);
	json_kv_u64(j, "sector_size", f.sector_size);
	json_kv_u64(j, "physical_sector_size", f.physical_sector_size);
	json_kv_u64(j, "info", f.info);
	json_kv_u64(j, "feature_flush_cache", f.flush_cache);
	json_kv_u64(j, "feature_discard", f.discard);
	json_kv_u64(j, "discard_granularity", f.discard_granularity);
	json_kv_u64(j, "discard_alignment", f.discard_alignment);
	json_kv_u64(j, "feature_max_indirect_segments",
		    f.max_indirect_segments);
	json_kv_u64(j, "ring_size", 32u << a.order);
	json_obj_end(j);
	reply_end(c, mark);
}

/*
 * The ring is down: answer every connection waiting for it.  From the
 * loop's deferred call, never inside a command's handling; still, like
 * the pause callback, it only queues the replies and lets `kick` go on.
 */
static void ctl_blkif_down(void *arg)
{
	struct worker_ctl *ctl = arg;

	for (struct ctl_conn *c = ctl->conns; c; c = c->next) {
		size_t mark = json_len(&c->out);

		if (!c->blkif_wait)
			continue;
		c->blkif_wait = false;
		reply_ok(c);
		reply_check(c, mark);
		c->kick = true;
	}
	bks_defer_schedule(&ctl->kick);
}

static void cmd_blkif_disconnect(struct ctl_conn *c)
{
	struct worker_ctl *ctl = c->ctl;

	ctl_log(ctl, LOG_INFO, "control: blkif-disconnect (uid %u)",
		(unsigned int)c->uid);
	/* One waiter in the worker serves every connection that asks. */
	if (worker_blkif_disconnect(ctl->w, ctl_blkif_down, ctl) ==
	    WORKER_BLKIF_IDLE) {
		reply_ok(c);
		return;
	}
	c->blkif_wait = true;
}

/*
 * The ring left "connected" (worker_blkif_set_notify()): every
 * blkif-watch gets its one event line, and is closed once it has gone.
 * Maybe inside the export's callback: it only queues, as the pause
 * callback does, and lets `kick` send.
 */
static void ctl_blkif_event(void *arg, const char *state, const char *why)
{
	struct worker_ctl *ctl = arg;
	bool any = false;

	for (struct ctl_conn *c = ctl->conns; c; c = c->next) {
		size_t mark = json_len(&c->out);

		if (!c->blkif_watch)
			continue;
		c->blkif_watch = false;
		ctl->nwatch--;
		worker_blkif_event_json(&c->out, ctl->w->name, state, why);
		reply_check(c, mark);
		c->close_after = true;
		c->kick = true;
		any = true;
	}
	if (any)
		bks_defer_schedule(&ctl->kick);
}

static void cmd_blkif_watch(struct ctl_conn *c)
{
	struct worker_ctl *ctl = c->ctl;
	const char *state = worker_blkif_state(ctl->w);
	size_t mark = json_len(&c->out);

	if (strcmp(state, "connected") != 0 && strcmp(state, "broken") != 0) {
		reply_error(c, ENOTCONN, "blkif-watch: no ring is connected%s",
			    strcmp(state, "none") ? " (it is disconnecting)"
						  : "");
		return;
	}
	if (ctl->nwatch >= CTL_MAX_WATCHES) {
		reply_error(c, EBUSY,
			    "blkif-watch: %u connections watch the ring "
			    "already",
			    ctl->nwatch);
		return;
	}
	ctl_log(ctl, LOG_INFO, "control: blkif-watch (uid %u)",
		(unsigned int)c->uid);
	json_obj_begin(&c->out);
	json_kv_bool(&c->out, "ok", true);
	json_kv_str(&c->out, "blkif", state);
	json_obj_end(&c->out);
	reply_end(c, mark);
	if (strcmp(state, "broken") == 0) {
		/* Broken already: the event at once, then the end. */
		worker_blkif_event_json(&c->out, ctl->w->name, state,
					worker_blkif_broken_why(ctl->w));
		c->close_after = true;
		return;
	}
	c->blkif_watch = true;
	ctl->nwatch++;
}

static void cmd_shutdown(struct ctl_conn *c)
{
	ctl_log(c->ctl, LOG_INFO, "control: shutdown (uid %u)",
		(unsigned int)c->uid);
	reply_ok(c);
	/*
	 * Not here: ops->shutdown() may free the ctl and this connection.
	 * The deferred call runs after the reply was sent (conn_flush at
	 * the end of this batch's handling).
	 */
	bks_defer_schedule(&c->ctl->shutdown);
}

/* Most words in a command line. */
#define CTL_MAX_ARGS 6

/* Handle one command line (NUL-terminated, no newline). */
static void handle_line(struct ctl_conn *c, char *line, size_t len)
{
	char *argv[CTL_MAX_ARGS + 1], *save = NULL, *tok;
	int argc = 0;

	if (memchr(line, '\0', len)) {
		reply_error(c, EINVAL, "the command contains a NUL byte");
		return;
	}
	/* reopen CHAIN: the rest of the line, verbatim (it may hold spaces). */
	if (strncmp(line, "reopen ", 7) == 0) {
		cmd_reopen(c, line + 7);
		return;
	}
	if (strcmp(line, "reopen") == 0) {
		reply_error(c, EINVAL, "usage: reopen CHAIN");
		return;
	}
	for (tok = strtok_r(line, " \t", &save); tok;
	     tok = strtok_r(NULL, " \t", &save)) {
		if (argc == CTL_MAX_ARGS) {
			reply_error(c, E2BIG, "too many arguments");
			return;
		}
		argv[argc++] = tok;
	}
	argv[argc] = NULL;
	if (argc == 0) {
		reply_error(c, EINVAL, "empty command");
		return;
	}
	if (strcmp(argv[0], "dirty") == 0) {
		cmd_dirty(c, argc, argv);
		return;
	}
	if (strcmp(argv[0], "clear-dirty") == 0) {
		cmd_clear_dirty(c, argc, argv);
		return;
	}
	if (strcmp(argv[0], "snapshot") == 0) {
		cmd_snapshot(c, argc, argv);
		return;
	}
	if (strcmp(argv[0], "blkif-connect") == 0) {
		cmd_blkif_connect(c, argc, argv);
		return;
	}
	if (strcmp(argv[0], "commit") == 0 || strcmp(argv[0], "stream") == 0) {
		cmd_job(c, argv[0][0] == 'c' ? BKS_JOB_COMMIT : BKS_JOB_STREAM,
			argc, argv);
		return;
	}
	if (strcmp(argv[0], "info") != 0 && strcmp(argv[0], "cancel") != 0 &&
	    strcmp(argv[0], "stats") != 0 && strcmp(argv[0], "pause") != 0 &&
	    strcmp(argv[0], "unpause") != 0 &&
	    strcmp(argv[0], "blkif-disconnect") != 0 &&
	    strcmp(argv[0], "blkif-watch") != 0 &&
	    strcmp(argv[0], "shutdown") != 0) {
		bks_sanitize_line(argv[0]);
		reply_error(c, ENOSYS, "unknown command '%.64s'", argv[0]);
		return;
	}
	if (argc > 1) {
		reply_error(c, EINVAL, "%s takes no arguments", argv[0]);
		return;
	}
	if (strcmp(argv[0], "info") == 0)
		cmd_info(c);
	else if (strcmp(argv[0], "stats") == 0)
		cmd_stats(c);
	else if (strcmp(argv[0], "pause") == 0)
		cmd_pause(c);
	else if (strcmp(argv[0], "unpause") == 0)
		cmd_unpause(c);
	else if (strcmp(argv[0], "cancel") == 0)
		cmd_cancel(c);
	else if (strcmp(argv[0], "blkif-disconnect") == 0)
		cmd_blkif_disconnect(c);
	else if (strcmp(argv[0], "blkif-watch") == 0)
		cmd_blkif_watch(c);
	else
		cmd_shutdown(c);
}

/*
 * Handle the complete lines in the input buffer, in order, while the
 * connection may answer: not while it waits for a pause (its reply must
 * come first) nor while too much output waits.
 */
static void process_lines(struct ctl_conn *c)
{
	char line[CTL_LINE_MAX + 1];

	while (!conn_waiting(c) && !c->close_after &&
	       out_pending(c) < CTL_OUT_HIGH) {
		char *nl = memchr(c->in, '\n', c->in_len);
		size_t len, used, mark;

		if (nl) {
			len = (size_t)(nl - c->in);
			used = len + 1;
		} else if (c->in_len == sizeof(c->in)) {
			reply_error(c, EMSGSIZE,
				    "command line too long (more than %d "
				    "bytes)",
				    CTL_LINE_MAX - 1);
			c->close_after = true;
			break;
		} else if (c->eof && c->in_len > 0) {
			/* The last line of a client that ended without "\n". */
			len = used = c->in_len;
		} else {
			break;
		}
		memcpy(line, c->in, len);
		line[len] = '\0';
		if (len > 0 && line[len - 1] == '\r')
			line[--len] = '\0';
		memmove(c->in, c->in + used, c->in_len - used);
		c->in_len -= used;
		mark = json_len(&c->out);
		handle_line(c, line, len);
		reply_check(c, mark);
	}
	if (c->eof && c->in_len == 0)
		c->close_after = true;
}

/*
 * Set the events the connection waits for, or free it when it is done:
 * the client is gone, or it ended (or must be closed) and has nothing
 * left to wait for.  Returns nothing: c may be freed.
 */
static void conn_update(struct ctl_conn *c)
{
	uint32_t ev = 0;

	if (c->gone) {
		conn_free(c);
		return;
	}
	if (c->close_after && !conn_waiting(c) && out_pending(c) == 0) {
		conn_free(c);
		return;
	}
	if (out_pending(c) > 0)
		ev |= EPOLLOUT;
	if (!c->eof && !c->close_after && !conn_waiting(c) &&
	    out_pending(c) < CTL_OUT_HIGH)
		ev |= EPOLLIN;
	/* With no events, epoll still reports EPOLLHUP: a client leaving. */
	if (bks_watch_mod(&c->watch, ev) < 0)
		conn_free(c);
}

/*
 * Handle the lines, send, and update c (which may be freed).  Sending
 * may make room for more replies: go on while lines are handled, since
 * no new input may come to wake us for the lines already buffered.
 */
static void conn_run(struct ctl_conn *c)
{
	size_t before;

	do {
		before = c->in_len;
		conn_flush(c);
		process_lines(c);
	} while (c->in_len != before);
	conn_flush(c);
	conn_update(c);
}

static void conn_read(struct ctl_conn *c)
{
	for (;;) {
		ssize_t n;

		if (c->in_len == sizeof(c->in))
			break; /* process_lines() will see an over-long line */
		n = recv(c->fd, c->in + c->in_len, sizeof(c->in) - c->in_len,
			 MSG_DONTWAIT);
		if (n > 0) {
			c->in_len += (size_t)n;
			c->active_ns = bks_now_ns();
			continue;
		}
		if (n == 0) {
			c->eof = true;
		} else if (errno == EINTR) {
			continue;
		} else if (errno != EAGAIN && errno != EWOULDBLOCK) {
			c->gone = true;
		}
		break;
	}
}

static void conn_event(struct bks_watch *watch, uint32_t events)
{
	struct ctl_conn *c = watch->opaque;

	if (events & EPOLLIN)
		conn_read(c);
	if (events & EPOLLRDHUP)
		c->eof = true;
	if (events & (EPOLLHUP | EPOLLERR)) {
		/*
		 * Both directions are closed: the client left.  What it sent
		 * in full is still done (a fire-and-forget `shutdown`), the
		 * replies are dropped, and a pause it was waiting for goes
		 * on: there is just no one to tell.
		 */
		c->eof = true;
		c->gone = true;
	}
	conn_run(c);
}

/* The `kick` deferred call: go on with connections a pause released. */
static void ctl_kick(struct bks_defer *d)
{
	struct worker_ctl *ctl = d->opaque;
	struct ctl_conn *c = ctl->conns, *next;

	for (; c; c = next) {
		next = c->next;
		if (!c->kick)
			continue;
		c->kick = false;
		/* May pause again (a new callback), or free c: not next. */
		conn_run(c);
	}
}

static void ctl_do_shutdown(struct bks_defer *d)
{
	struct worker_ctl *ctl = d->opaque;

	/* Last thing: this may free the ctl. */
	ctl->ops->shutdown(ctl->w);
}

/* ---- accepting ----------------------------------------------------------- */

/* Send one error line to a client being refused, and close it. */
static void __attribute__((format(printf, 4, 5)))
refuse(struct worker_ctl *ctl, int fd, int code, const char *fmt, ...)
{
	struct json_writer j;
	va_list ap;

	json_writer_init(&j, 4096);
	va_start(ap, fmt);
	put_verror(&j, ctl->w, code, fmt, ap);
	va_end(ap);
	/* Best effort: a fresh socket has room for one short line. */
	if (json_error(&j) == 0 &&
	    send(fd, j.buf, json_len(&j), MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		ctl_log(ctl, LOG_DEBUG, "control: send refusal: %m");
	json_writer_free(&j);
	close(fd);
}

/*
 * Log the 1st, 2nd, 4th, 8th... of a kind of event: a flood of
 * connections must not become a flood of log lines.
 */
static bool log_this(uint64_t n)
{
	return (n & (n - 1)) == 0;
}

/* The idle timeout: rechecked when it fires, not moved on every byte. */
static void conn_idle(struct bks_timer *t)
{
	struct ctl_conn *c = t->opaque;
	struct worker_ctl *ctl = c->ctl;
	uint64_t now = bks_now_ns();
	uint64_t idle = now > c->active_ns ? now - c->active_ns : 0;

	if (conn_waiting(c)) {
		/* Waiting for the worker, not idle: count from the reply. */
		c->active_ns = now;
		bks_timer_arm(&c->idle, ctl->idle_ns);
		return;
	}
	if (idle < ctl->idle_ns) {
		bks_timer_arm(&c->idle, ctl->idle_ns - idle);
		return;
	}
	ctl->timed_out++;
	if (log_this(ctl->timed_out))
		ctl_log(ctl, LOG_INFO,
			"control: closed a connection idle for %llu ms "
			"(uid %u; %llu so far)",
			(unsigned long long)(idle / 1000000u),
			(unsigned int)c->uid,
			(unsigned long long)ctl->timed_out);
	conn_free(c);
}

/*
 * The table is full: free the connection that should go first to make
 * room for a newcomer, and return true; false if none may go.  Never one
 * waiting for a pause (its reply is the worker's own business) or one
 * whose pause reply is queued.  Idle ones first (nothing half received,
 * no reply waiting), then the others; the longest idle first in each:
 * the toolstack's own connection is the newest and sends its command at
 * once, so a flood of idlers evicts only itself.
 */
static bool ctl_evict(struct worker_ctl *ctl)
{
	struct ctl_conn *victim = NULL;
	bool victim_clean = false;

	for (struct ctl_conn *c = ctl->conns; c; c = c->next) {
		bool clean = c->in_len == 0 && out_pending(c) == 0;

		if (conn_waiting(c) || c->kick)
			continue;
		if (!victim || (clean && !victim_clean) ||
		    (clean == victim_clean &&
		     c->active_ns < victim->active_ns)) {
			victim = c;
			victim_clean = clean;
		}
	}
	if (!victim)
		return false;
	ctl->evicted++;
	if (log_this(ctl->evicted))
		ctl_log(
		    ctl, LOG_INFO,
		    "control: %d connections open: evicted one idle "
		    "for %llu ms (uid %u; %llu so far)",
		    CTL_MAX_CONNS,
		    (unsigned long long)((bks_now_ns() - victim->active_ns) /
					 1000000u),
		    (unsigned int)victim->uid,
		    (unsigned long long)ctl->evicted);
	conn_free(victim);
	return true;
}

static void conn_new(struct worker_ctl *ctl, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);
	struct ctl_conn *c;
	int rc;

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) < 0) {
		ctl_log(ctl, LOG_ERR, "control: SO_PEERCRED: %m");
		close(fd);
		return;
	}
	if (cred.uid != 0 && cred.uid != geteuid()) {
		ctl_log(ctl, LOG_WARNING,
			"control: refused uid %u (pid %d): only root and "
			"uid %u may control this worker",
			(unsigned int)cred.uid, (int)cred.pid,
			(unsigned int)geteuid());
		refuse(ctl, fd, EACCES,
		       "permission denied: uid %u may not control "
		       "this worker",
		       (unsigned int)cred.uid);
		return;
	}
	if (ctl->nconns >= CTL_MAX_CONNS && !ctl_evict(ctl)) {
		ctl->refused++;
		ctl_log(ctl, LOG_WARNING,
			"control: refused a connection: %d already open, "
			"none idle",
			CTL_MAX_CONNS);
		refuse(ctl, fd, EAGAIN, "too many control connections (%d)",
		       CTL_MAX_CONNS);
		return;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		ctl_log(ctl, LOG_ERR, "control: allocate connection: %m");
		refuse(ctl, fd, ENOMEM, "out of memory");
		return;
	}
	c->ctl = ctl;
	c->fd = fd;
	c->uid = cred.uid;
	c->active_ns = bks_now_ns();
	bks_timer_init(ctl->w->loop, &c->idle, conn_idle, c);
	json_writer_init(&c->out, CTL_OUT_MAX);
	rc = bks_watch_add(ctl->w->loop, &c->watch, fd, EPOLLIN | EPOLLRDHUP,
			   conn_event, c);
	if (rc < 0) {
		ctl_log(ctl, LOG_ERR, "control: watch connection: %s",
			strerror(-rc));
		free(c);
		close(fd);
		return;
	}
	c->next = ctl->conns;
	if (ctl->conns)
		ctl->conns->prev = c;
	ctl->conns = c;
	ctl->nconns++;
	ctl->accepted++;
	bks_timer_arm(&c->idle, ctl->idle_ns);
}

static void accept_retry(struct bks_timer *t)
{
	struct worker_ctl *ctl = t->opaque;

	if (bks_watch_mod(&ctl->accept_watch, EPOLLIN) < 0)
		ctl_log(ctl, LOG_ERR,
			"control: cannot watch the socket again: %m");
}

static void accept_event(struct bks_watch *watch, uint32_t events)
{
	struct worker_ctl *ctl = watch->opaque;

	(void)events;
	for (int i = 0; i < CTL_ACCEPT_BATCH; i++) {
		int fd = accept4(ctl->listen_fd, NULL, NULL,
				 SOCK_NONBLOCK | SOCK_CLOEXEC);

		if (fd >= 0) {
			conn_new(ctl, fd);
			continue;
		}
		if (errno == EINTR || errno == ECONNABORTED)
			continue;
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			break;
		ctl_log(ctl, LOG_ERR, "control: accept: %m");
		/*
		 * Out of fds or memory: the listening socket stays readable,
		 * so stop watching it for a while instead of spinning.
		 */
		bks_watch_mod(&ctl->accept_watch, 0);
		bks_timer_arm(&ctl->accept_retry, CTL_ACCEPT_RETRY_NS);
		break;
	}
}

/* ---- the ctl ------------------------------------------------------------- */

int worker_ctl_new(struct worker_ctl **out, struct worker *w,
		   const struct worker_ctl_ops *ops, int listen_fd,
		   struct bks_error *err)
{
	struct worker_ctl *ctl = NULL;
	int rc = 0;

	*out = NULL;
	ctl = calloc(1, sizeof(*ctl));
	if (!ctl) {
		rc = bks_error_set(err, ENOMEM, "allocate the control socket");
		goto out;
	}
	ctl->w = w;
	ctl->ops = ops;
	ctl->listen_fd = listen_fd;
	ctl->idle_ns =
	    (uint64_t)(w->ctl_idle_ms ? w->ctl_idle_ms : CTL_IDLE_TIMEOUT_MS) *
	    1000000u;
	bks_timer_init(w->loop, &ctl->accept_retry, accept_retry, ctl);
	bks_defer_init(w->loop, &ctl->kick, ctl_kick, ctl);
	bks_defer_init(w->loop, &ctl->shutdown, ctl_do_shutdown, ctl);
	ctl->extents = calloc(CTL_DIRTY_MAX, sizeof(*ctl->extents));
	if (!ctl->extents) {
		rc = bks_error_set(err, ENOMEM, "allocate the control socket");
		goto out;
	}
	rc = bks_watch_add(w->loop, &ctl->accept_watch, listen_fd, EPOLLIN,
			   accept_event, ctl);
	if (rc < 0) {
		rc = bks_error_set(err, -rc, "watch the control socket");
		goto out;
	}
	worker_job_set_notify(w, ctl_job_ended, ctl);
	worker_blkif_set_notify(w, ctl_blkif_event, ctl);
	*out = ctl;
	ctl = NULL;
out:
	if (ctl) {
		free(ctl->extents);
		free(ctl);
	}
	return rc;
}

void worker_ctl_free(struct worker_ctl *ctl)
{
	struct worker *w;

	if (!ctl)
		return;
	w = ctl->w;
	bks_watch_del(&ctl->accept_watch);
	bks_timer_cancel(&ctl->accept_retry);
	bks_defer_cancel(&ctl->kick);
	bks_defer_cancel(&ctl->shutdown);
	/* A pause waiter still registered would call a freed ctl. */
	if (ctl->pause_pending)
		ctl->ops->pause_forget(w, ctl_pause_done, ctl);
	/* Nor may a live operation or a job call it back. */
	worker_live_forget(w, ctl);
	worker_job_set_notify(w, NULL, NULL);
	worker_blkif_set_notify(w, NULL, NULL);
	while (ctl->conns) {
		/* Replies already made (e.g. to `shutdown`) still go out. */
		conn_flush(ctl->conns);
		conn_free(ctl->conns);
	}
	free(ctl->extents);
	free(ctl);
}
