/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-worker --name NAME --chain CHAIN [--rundir DIR] [--read-only]
 *                 [--foreground] [--ready-fd FD] [--timeouts H,S,C]
 *                 [--supervisor-fd FD] [--io-engine auto|io_uring|libaio]
 *                 [--fuse | --fuse-mount DIR [--fuse-fd FD]]
 *                 [--fuse-transport auto|io_uring|readv]
 *
 * One process serving one virtual disk: it opens the chain, exports it
 * over NBD on DIR/NAME/nbd.sock and answers the control protocol on
 * DIR/NAME/ctl.sock (docs/control-protocol.txt).  Everything runs on one
 * event loop; nothing blocks it.
 *
 * Readiness: with --ready-fd, the worker writes one line to FD once it
 * serves ("ok") or once start-up failed ("error: <why>"), then closes FD.
 * The starter reads to EOF: no polling, no sleeping.
 *
 * SIGTERM (or SIGINT, or the ctl "shutdown") drains in-flight I/O, flushes
 * the chain, removes the sockets and pid file, and exits 0.
 *
 * --supervisor-fd is given by blkstack-supervisor: the worker's end of
 * the channel of worker-super.h, on which it beats every second and says
 * "stopping" when it shuts down gracefully.
 *
 * --timeouts is for tests, so that they need not wait for the defaults:
 * the NBD handshake deadline, the NBD stall timeout and the control
 * connections' idle timeout, in milliseconds, each 0 for its default
 * (docs/control-protocol.txt, "Connection limits").
 *
 * --fuse-mount DIR also serves the disk as the file DIR/disk of a FUSE
 * file system the worker mounts there (include/blkstack/fuse-server.h):
 * a loop device on it is a dom0 device of the disk with no NBD hop.  It
 * is unmounted at shutdown.  Under a supervisor, and on a kernel that can
 * resend FUSE requests (Linux 6.9+), the worker hands the supervisor a
 * duplicate of its /dev/fuse descriptor ("fuse-fd", worker-super.h),
 * which keeps the file system alive if the worker dies; the supervisor
 * gives it to the next worker with --fuse-fd FD, which adopts the session
 * and has the kernel resend what the dead one had read: the loop device
 * above sees latency, not errors.  Unsupervised, or on an older kernel, a
 * crash ends the file system (the loop device then fails its I/O).
 * --fuse is --fuse-mount DIR/NAME/fuse (WORKER_FILE_FUSE), a mount point
 * the worker makes in its own directory and removes at a graceful stop:
 * the hotplug helper's "fuse" device mechanism (helpers/hotplug/hp-dev.h).
 *
 * --fuse-transport picks how the FUSE export and the kernel exchange
 * requests (blkstack/fuse-server.h): readv/writev on /dev/fuse, or FUSE
 * over io_uring.  auto (the default) is readv under a supervisor (a
 * session on io_uring cannot be handed to the next worker: the kernel
 * does not resend what a dead server's ring held), and unsupervised what
 * measured faster.  io_uring needs the fuse module's enable_uring (else
 * the worker does not start); it never hands the session over, so a
 * crash ends the file system, as unsupervised.
 *
 * --io-engine (else the conf key io-engine, else auto) picks the file
 * drivers' I/O engine (blkstack/io-engine.h); auto is resolved once at
 * start, so that info and stats say "io_engine": what the chain uses.
 *
 * What a worker restarted after a crash needs is kept in DIR/NAME
 * (worker-state.h): the pause ("paused": a worker that finds it comes up
 * paused) and the layers' state (layerN.state: log: bitmaps, through the
 * chain's state directory).  A graceful stop removes it.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <syslog.h>
#include <unistd.h>

#include "conf.h"
#include "ready-fd.h"
#include "rundir-files.h"
#include "rundir.h"
#include "version.h"
#include "worker-blkif.h"
#include "worker-ctl.h"
#include "worker-job.h"
#include "worker-live.h"
#include "worker-run.h"
#include "worker-state.h"
#include "worker-super.h"
#include "worker.h"

#define PROG "blkstack-worker"
/* How long shutdown waits for clients to take their last replies. */
#define STOP_TIMEOUT_NS (30ull * 1000000000ull)

struct opts {
	struct worker_spec spec; /* name, chain, rundir, read_only, fuse */
	bool foreground;
	int ready_fd;
	int super_fd; /* --supervisor-fd, -1: none */
	/* --timeouts, ms (0: default) */
	unsigned int handshake_ms, stall_ms, ctl_idle_ms;
	const char *io_engine;	     /* --io-engine, NULL: the conf's */
	const char *fuse_transport;  /* --fuse-transport, NULL: auto */
	const char *fuse_mount;	     /* --fuse-mount, NULL: none */
	int fuse_fd;		     /* --fuse-fd (adopt), -1: mount */
	char fuse_own[PATH_MAX + 8]; /* --fuse: DIR/NAME/fuse, made at start */
};

/* What main holds open; closed in one place. */
struct res {
	int lock_fd, nbd_fd, ctl_fd;
	struct stop_signals sig;
	bool nbd_sock, ctl_sock, pid_file; /* created: remove at exit */
	bool locked;			   /* we hold DIR/NAME/lock */
	bool fuse_dir;			   /* made DIR/NAME/fuse (--fuse) */
};

/* ---- logging and state -------------------------------------------------- */

/* Log a line (stderr with --foreground, else syslog); ops.log too. */
static void worker_vlog(const struct worker *w, int prio, const char *fmt,
			va_list ap) __attribute__((format(printf, 3, 0)));
static void worker_vlog(const struct worker *w, int prio, const char *fmt,
			va_list ap)
{
	char msg[1024];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	bks_sanitize_line(msg);
	if (w->syslog) {
		char line[sizeof(msg) + 256];

		snprintf(line, sizeof(line), "%s: %s", w->name, msg);
		bks_syslog_send(w->syslog, prio, line);
	} else {
		fprintf(stderr, PROG "[%s]: %s\n", w->name, msg);
	}
}

static void worker_log(const struct worker *w, int prio, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static void worker_log(const struct worker *w, int prio, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	worker_vlog(w, prio, fmt, ap);
	va_end(ap);
}

/* ---- pause --------------------------------------------------------------- */

/* Hand the pause result to its waiter, if any; the waiter is forgotten. */
static void pause_notify(struct worker *w, int rc)
{
	worker_pause_fn *fn = w->pause_done;
	void *arg = w->pause_arg;

	w->pause_done = NULL;
	w->pause_arg = NULL;
	if (fn)
		fn(arg, rc);
}

static void quiesced(void *arg)
{
	struct worker *w = arg;
	struct bks_error err = {0};
	int rc;

	if (w->state != WORKER_PAUSING)
		return;
	/*
	 * Recorded before it is acknowledged: a worker restarted after a
	 * crash from here on comes up paused.  Not recorded, not paused: a
	 * pause a restart could lose is refused.
	 */
	rc = worker_state_pause_save(w, &err);
	if (rc < 0) {
		worker_log(w, LOG_ERR, "pause failed: %s", err.msg);
		w->paused_ns += bks_now_ns() - w->pause_start;
		w->state = WORKER_RUNNING;
		bks_export_resume(w->nbd);
		pause_notify(w, rc);
		return;
	}
	w->state = WORKER_PAUSED;
	worker_super_beat(w->super);
	worker_log(w, LOG_INFO, "paused: no request in flight");
	pause_notify(w, 0);
}

/* ops.pause: see worker-ctl.h. */
static int worker_pause(struct worker *w, worker_pause_fn *done, void *arg)
{
	int rc;

	switch (w->state) {
	case WORKER_STOPPING:
		return -ESHUTDOWN;
	case WORKER_PAUSED:
		if (done)
			done(arg, 0);
		return 0;
	case WORKER_PAUSING:
		pause_notify(w, -ECANCELED);
		w->pause_done = done;
		w->pause_arg = arg;
		return 0;
	case WORKER_RUNNING:
		break;
	}
	w->state = WORKER_PAUSING;
	worker_super_beat(w->super);
	w->pause_start = bks_now_ns();
	w->pause_done = done;
	w->pause_arg = arg;
	worker_log(w, LOG_INFO, "pausing: holding new requests");
	/* A hold is a drain of the chain: quiesced() comes from the loop. */
	rc = bks_export_hold(w->nbd, quiesced, w);
	if (rc < 0) {
		w->state = WORKER_RUNNING;
		w->pause_done = NULL;
		w->pause_arg = NULL;
	}
	return rc;
}

/* ops.unpause: see worker-ctl.h. */
static int worker_unpause(struct worker *w)
{
	struct bks_error err = {0};
	int rc;

	switch (w->state) {
	case WORKER_STOPPING:
		return -ESHUTDOWN;
	case WORKER_RUNNING:
		return 0;
	case WORKER_PAUSED:
		/* Forgotten first: a restart must not come up paused. */
		rc = worker_state_pause_clear(w, &err);
		if (rc < 0) {
			worker_log(w, LOG_ERR, "unpause failed: %s", err.msg);
			return rc;
		}
		w->pauses++;
		break;
	case WORKER_PAUSING:
		pause_notify(w, -ECANCELED);
		break;
	}
	w->paused_ns += bks_now_ns() - w->pause_start;
	w->state = WORKER_RUNNING;
	worker_super_beat(w->super);
	bks_export_resume(w->nbd);
	worker_log(w, LOG_INFO, "running");
	return 0;
}

/* ops.pause_forget: see worker-ctl.h. */
static void worker_pause_forget(struct worker *w, worker_pause_fn *done,
				void *arg)
{
	if (w->pause_done == done && w->pause_arg == arg) {
		w->pause_done = NULL;
		w->pause_arg = NULL;
	}
}

/* ---- shutdown ------------------------------------------------------------ */

static void flushed(struct bks_req *req, int result)
{
	struct worker *w = req->opaque;

	if (result < 0) {
		worker_log(w, LOG_ERR, "final flush: %s", strerror(-result));
		w->exit_code = 1;
	}
	bks_loop_stop(w->loop);
}

static void nbd_down(void *arg);

/* The FUSE export is down too: back to nbd_down() for the flush. */
static void fuse_down(void *arg)
{
	struct worker *w = arg;

	w->fuse_down = true;
	nbd_down(w);
}

/* The guest's ring is down too (worker-blkif.h): back to nbd_down(). */
static void blkif_down(void *arg)
{
	nbd_down(arg);
}

/* Every client is gone: flush what the chain holds, then leave the loop. */
static void nbd_down(void *arg)
{
	struct worker *w = arg;
	const struct bks_info *info;

	/* The FUSE export's file goes after NBD's clients. */
	if (w->fuse && !w->fuse_down) {
		bks_export_shutdown(w->fuse, fuse_down, w);
		return;
	}
	/* Then the guest's ring, if one is served: its requests complete. */
	if (worker_blkif_disconnect(w, blkif_down, w) == 0)
		return;
	/* A cancelled job still stopping: job_stopped() comes back here. */
	if (worker_job_running(w)) {
		w->down_pending = true;
		return;
	}
	w->down_pending = false;
	info = bks_chain_info(w->chain);
	bks_timer_cancel(&w->stop_timer);
	if (info->read_only || !(info->ops & BKS_OPF(BKS_OP_FLUSH))) {
		bks_loop_stop(w->loop);
		return;
	}
	memset(&w->flush_req, 0, sizeof(w->flush_req));
	w->flush_req.op = BKS_OP_FLUSH;
	w->flush_req.done = flushed;
	w->flush_req.opaque = w;
	bks_chain_submit(w->chain, &w->flush_req);
}

/* w->job_stopped: the job cancelled by the shutdown has ended. */
static void job_stopped(struct worker *w)
{
	if (w->down_pending)
		nbd_down(w);
}

static void stop_timeout(struct bks_timer *t)
{
	struct worker *w = t->opaque;

	worker_log(w, LOG_ERR,
		   "shutdown: clients did not finish in %llu s; stopping",
		   STOP_TIMEOUT_NS / 1000000000ull);
	w->exit_code = 1;
	bks_loop_stop(w->loop);
}

/*
 * Shut down gracefully (ops.shutdown, SIGTERM): stop taking requests, let
 * in-flight ones finish, flush the chain, remove the sockets and pid file,
 * leave the loop; the process then exits 0.  Idempotent.
 */
static void worker_shutdown(struct worker *w)
{
	if (w->state == WORKER_STOPPING)
		return;
	worker_log(w, LOG_INFO, "shutting down: draining in-flight I/O");
	pause_notify(w, -ECANCELED);
	w->state = WORKER_STOPPING;
	worker_super_stopping(w->super);
	/* Before the holds end: a snapshot waiting for its drain gives up. */
	worker_live_stop(w);
	if (worker_job_cancel(w) == 0)
		worker_log(w, LOG_INFO, "shutting down: cancelling the job");
	bks_timer_init(w->loop, &w->stop_timer, stop_timeout, w);
	bks_timer_arm(&w->stop_timer, STOP_TIMEOUT_NS);
	/* Ends a pause first; may call nbd_down() at once. */
	bks_export_shutdown(w->nbd, nbd_down, w);
}

static void on_signal(void *opaque, unsigned int signo)
{
	struct worker *w = opaque;

	worker_log(w, LOG_INFO, "signal %u", signo);
	worker_shutdown(w);
}

/* w->dir/name, or -ENAMETOOLONG. */
static int dir_path(const struct worker *w, const char *name, char *buf,
		    size_t size, struct bks_error *err)
{
	int n = snprintf(buf, size, "%s/%s", w->dir, name);

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG, "%s/%s: too long",
					w->dir, name);
	return 0;
}

/*
 * Take DIR/NAME/lock: one worker per name.  An exiting worker (and
 * blkstack-ctl's clean-up) unlinks the lock and removes DIR/NAME while
 * holding it (rundir-files.h starts again then).
 */
static int take_lock(struct worker *w, struct res *r, struct bks_error *err)
{
	char pid[32];
	int rc;

	rc = rundir_take_lock(w->dir, WORKER_FILE_LOCK, WORKER_FILE_PID,
			      &r->lock_fd, pid, sizeof(pid), err);
	if (rc == 0)
		r->locked = true;
	if (rc != -EWOULDBLOCK)
		return rc;
	return bks_error_setmsg(
	    err, EBUSY, "worker %s is already running (pid %s)", w->name, pid);
}

/* A listening Unix socket at DIR/NAME/file, mode 0600 (umask 077). */
static int listen_unix(struct worker *w, const char *file, int *fdp,
		       bool *created, struct bks_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char path[PATH_MAX + 16];
	int fd = -1, rc;

	*fdp = -1;
	rc = dir_path(w, file, path, sizeof(path), err);
	if (rc < 0)
		goto out;
	if (strlen(path) >= sizeof(sa.sun_path)) {
		rc = bks_error_setmsg(err, ENAMETOOLONG,
				      "socket path %s is longer than %zu "
				      "bytes (use a shorter --rundir)",
				      path, sizeof(sa.sun_path) - 1);
		goto out;
	}
	strcpy(sa.sun_path, path);
	/* We hold the lock: a socket here is a dead worker's. */
	if (unlink(path) < 0 && errno != ENOENT) {
		rc = bks_error_set(err, errno, "unlink %s", path);
		goto out;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		rc = bks_error_set(err, errno, "socket");
		goto out;
	}
	if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		rc = bks_error_set(err, errno, "bind %s", path);
		goto out;
	}
	*created = true;
	if (chmod(path, 0600) < 0 || listen(fd, 64) < 0) {
		rc = bks_error_set(err, errno, "listen %s", path);
		goto out;
	}
	*fdp = fd;
	fd = -1;
out:
	if (fd >= 0)
		close(fd);
	return rc;
}

/* DIR/NAME/pid, written whole or not at all. */
static int write_pid(struct worker *w, struct res *r, struct bks_error *err)
{
	int rc = rundir_write_pid(w->dir, WORKER_FILE_PID, err);

	if (rc == 0)
		r->pid_file = true;
	return rc;
}

static int setup_signals(struct worker *w, struct res *r, struct bks_error *err)
{
	static const int sigs[] = {SIGTERM, SIGINT, 0};

	signal(SIGHUP, SIG_IGN);
	return stop_signals_start(&r->sig, w->loop, sigs, on_signal, w, err);
}

/* What the control socket calls up to. */
static const struct worker_ctl_ops ctl_ops = {
    .log = worker_vlog,
    .pause = worker_pause,
    .unpause = worker_unpause,
    .pause_forget = worker_pause_forget,
    .shutdown = worker_shutdown,
};

/*
 * A paused worker that died left DIR/NAME/paused: this one replaces it,
 * so it holds requests from the start, as the pause did, until unpause.
 */
static int resume_pause(struct worker *w, struct bks_error *err)
{
	struct bks_error why = {0};
	int rc;

	if (!worker_state_pause_saved(w, &why))
		return 0;
	if (why.code)
		worker_log(w, LOG_ERR, "%s: starting paused", why.msg);
	rc = worker_pause(w, NULL, NULL);
	if (rc < 0)
		return bks_error_set(err, -rc, "start paused");
	w->started_paused = true;
	worker_log(w, LOG_INFO,
		   "starting paused: the worker this one replaces was paused "
		   "(unpause to go on)");
	return 0;
}

/*
 * The metadata cache size of the chain's format sinks: the conf key
 * meta-cache (bytes, with K/M/G suffixes; 0 or absent: each driver's
 * default), read when the worker starts.  Returns 0 or -EINVAL with err
 * naming file:line.
 */
static int read_meta_cache(uint64_t *out, struct bks_error *err)
{
	const char *name, *v;
	char *text = NULL;
	char value[64];
	unsigned int line;
	size_t len;
	bool found;
	int rc;

	*out = 0;
	rc = conf_read(&text, &name, err);
	if (rc < 0)
		return rc;
	rc = conf_find(text, name, "meta-cache", &v, &len, &line, &found, err);
	if (rc == 0 && found) {
		if (len >= sizeof(value))
			len = sizeof(value) - 1;
		memcpy(value, v, len);
		value[len] = 0;
		if (bks_parse_size(value, out) < 0)
			rc = bks_error_setmsg(err, EINVAL,
					      "%s:%u: meta-cache: '%s' is not "
					      "a size in bytes (K, M, G "
					      "suffixes)",
					      name, line, value);
	}
	free(text);
	return rc;
}

/*
 * The file drivers' I/O engine: opt (--io-engine) if given, else the conf
 * key io-engine, else auto; auto resolved to what this machine can do
 * (bks_io_engine_resolve()).  Returns 0 or -EINVAL with err naming the
 * option or file:line and the value.
 */
static int read_io_engine(const char *opt, enum bks_io_engine *out,
			  struct bks_error *err)
{
	/* In enum bks_io_engine's order. */
	static const char *const words[] = {"auto", "libaio", "io_uring", NULL};
	unsigned int i = BKS_IO_ENGINE_AUTO;
	const char *name;
	char *text = NULL;
	int rc;

	if (opt) {
		rc = bks_io_engine_parse(opt, out, err);
		if (rc < 0)
			return bks_error_prepend(err, "--io-engine: ");
		*out = bks_io_engine_resolve(*out);
		return 0;
	}
	rc = conf_read(&text, &name, err);
	if (rc < 0)
		return rc;
	rc = conf_word(text, name, "io-engine", words, &i, err);
	free(text);
	if (rc < 0)
		return rc;
	*out = bks_io_engine_resolve((enum bks_io_engine)i);
	return 0;
}

/*
 * A worker that died after a snapshot, reopen or commit left the chain it
 * served in DIR/NAME/chain: this one opens that, not --chain (which names
 * what the disk was created with).
 */
static int resume_chain(struct worker *w, struct bks_error *err)
{
	int rc =
	    worker_state_chain_load(w, w->chain_buf, sizeof(w->chain_buf), err);

	if (rc < 0)
		return rc;
	if (rc == 0)
		return 0;
	if (strcmp(w->chain_buf, w->chain_str) != 0)
		worker_log(w, LOG_INFO,
			   "opening %s from %s/chain, not --chain %s (a "
			   "snapshot, reopen or commit changed it)",
			   w->chain_buf, w->dir, w->chain_str);
	w->chain_str = w->chain_buf;
	return 0;
}

/*
 * The FUSE export's INIT is done: a supervisor that keeps a duplicate of
 * /dev/fuse keeps the file system alive across a crash of this worker, if
 * the kernel can resend what a dead worker had read.
 */
static void fuse_inited(void *arg, int dev_fd,
			const struct bks_fuse_init_info *info)
{
	struct worker *w = arg;
	int rc;

	if (info->why_not[0])
		worker_log(w, LOG_WARNING,
			   "FUSE: serving with readv, not io_uring: %s",
			   info->why_not);
	if (!w->super)
		return;
	if (info->transport == BKS_FUSE_TRANSPORT_URING) {
		worker_log(w, LOG_INFO,
			   "FUSE over io_uring: the file system ends with "
			   "this worker (the kernel does not resend what a "
			   "dead server's ring entries held)");
		return;
	}
	if (!info->can_resend) {
		worker_log(w, LOG_INFO,
			   "FUSE: the kernel cannot resend requests "
			   "(Linux < 6.9): the file system ends with this "
			   "worker");
		return;
	}
	rc = worker_super_send_fuse_fd(w->super, dev_fd);
	if (rc < 0)
		worker_log(w, LOG_ERR,
			   "FUSE: handing /dev/fuse to the supervisor: %s",
			   strerror(-rc));
}

/*
 * --fuse: the mount point DIR/NAME/fuse, made here (0700) unless a worker
 * before this one left it (mounted: adopted or taken down by the export).
 */
static int own_fuse_dir(const struct worker *w, struct opts *o, struct res *r,
			struct bks_error *err)
{
	int n;

	if (!o->spec.fuse)
		return 0;
	n = snprintf(o->fuse_own, sizeof(o->fuse_own), "%s/" WORKER_FILE_FUSE,
		     w->dir);
	if (n < 0 || (size_t)n >= sizeof(o->fuse_own))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"%s/" WORKER_FILE_FUSE ": too long",
					w->dir);
	if (mkdir(o->fuse_own, 0700) < 0 && errno != EEXIST)
		return bks_error_set(err, errno, "FUSE export: mkdir %s",
				     o->fuse_own);
	r->fuse_dir = true;
	o->fuse_mount = o->fuse_own;
	return 0;
}

/*
 * --fuse-transport (NULL: auto), resolved: auto is readv under a
 * supervisor (supervised), which relies on the kernel's resend.
 * io_uring for a FUSE export (serving) where the kernel does not serve
 * it: -EOPNOTSUPP.
 */
static int read_fuse_transport(const char *opt, bool supervised, bool serving,
			       enum bks_fuse_transport *out,
			       struct bks_error *err)
{
	int rc;

	*out = BKS_FUSE_TRANSPORT_AUTO;
	if (opt) {
		rc = bks_fuse_transport_parse(opt, out, err);
		if (rc < 0)
			return bks_error_prepend(err, "--fuse-transport: ");
	}
	*out = bks_fuse_transport_resolve(*out, supervised);
	if (serving && *out == BKS_FUSE_TRANSPORT_URING &&
	    !bks_fuse_uring_enabled())
		return bks_error_setmsg(
		    err, EOPNOTSUPP,
		    "--fuse-transport io_uring: this kernel does not serve "
		    "FUSE over io_uring (Linux 6.14+, with "
		    "/sys/module/fuse/parameters/enable_uring Y)");
	return 0;
}

/* Everything before "ok": returns 0 or -errno with err set. */
static int start(struct worker *w, struct opts *o, struct res *r,
		 struct bks_error *err)
{
	struct bks_nbd_config cfg = {
	    .name = w->name,
	    .read_only = w->read_only,
	    .handshake_timeout_ms = o->handshake_ms,
	    .stall_timeout_ms = o->stall_ms,
	};
	int rc, n;

	umask(077);
	rc = rundir_ensure_dir(o->spec.rundir, 0755, err);
	if (rc < 0)
		return rc;
	n = snprintf(w->dir, sizeof(w->dir), "%s/%s", o->spec.rundir, w->name);
	if (n < 0 || (size_t)n >= sizeof(w->dir))
		return bks_error_setmsg(err, ENAMETOOLONG, "%s/%s: too long",
					o->spec.rundir, w->name);
	rc = take_lock(w, r, err);
	if (rc < 0)
		return rc;
	rc = own_fuse_dir(w, o, r, err);
	if (rc < 0)
		return rc;
	rc = bks_loop_new(&w->loop, err);
	if (rc < 0)
		return rc;
	rc = read_meta_cache(&w->meta_cache, err);
	if (rc < 0)
		return rc;
	rc = read_io_engine(o->io_engine, &w->io_engine, err);
	if (rc < 0)
		return rc;
	rc =
	    read_fuse_transport(o->fuse_transport, o->super_fd >= 0,
				o->fuse_mount != NULL, &w->fuse_transport, err);
	if (rc < 0)
		return rc;
	rc = resume_chain(w, err);
	if (rc < 0)
		return rc;
	cfg.description = w->chain_str;
	rc = worker_live_new(w, err);
	if (rc == 0)
		rc = worker_job_new(w, err);
	if (rc < 0)
		return rc;
	/* Layer state (log: bitmaps) in DIR/NAME: a restart keeps it. */
	rc = bks_chain_open_config(&w->chain, w->chain_str,
				   &(const struct bks_chain_config){
				       .loop = w->loop,
				       .read_only = w->read_only,
				       .state_dir = w->dir,
				       .meta_cache = w->meta_cache,
				       .io_engine = w->io_engine,
				   },
				   err);
	if (rc < 0)
		return rc;
	rc = listen_unix(w, "nbd.sock", &r->nbd_fd, &r->nbd_sock, err);
	if (rc < 0)
		return rc;
	rc = listen_unix(w, "ctl.sock", &r->ctl_fd, &r->ctl_sock, err);
	if (rc < 0)
		return rc;
	rc = bks_nbd_export_new(&w->nbd, w->loop, w->chain, r->nbd_fd, &cfg,
				err);
	if (rc < 0)
		return rc;
	rc = bks_export_start(w->nbd, err);
	if (rc < 0)
		return rc;
	if (o->fuse_mount) {
		int adopt_fd = o->fuse_fd;

		/*
		 * Unmounted since the last worker died (by an administrator):
		 * nothing to adopt; the disk is served on a new mount, and the
		 * supervisor lets go of the old session when it gets the new
		 * one's descriptor.
		 */
		if (adopt_fd >= 0 && !bks_fuse_mounted(o->fuse_mount)) {
			worker_log(w, LOG_WARNING,
				   "FUSE: nothing is mounted on %s any more: "
				   "mounting anew instead of adopting",
				   o->fuse_mount);
			close(adopt_fd);
			adopt_fd = -1;
		}
		rc = bks_fuse_export_new(&w->fuse, w->loop, w->chain,
					 &(const struct bks_fuse_config){
					     .mountpoint = o->fuse_mount,
					     .read_only = w->read_only,
					     .adopt = adopt_fd >= 0,
					     .dev_fd = adopt_fd,
					     .transport = w->fuse_transport,
					     .inited = fuse_inited,
					     .arg = w,
					 },
					 err);
		if (rc == 0 && adopt_fd >= 0)
			worker_log(w, LOG_INFO,
				   "adopting the FUSE session on %s: the "
				   "kernel resends what was in flight",
				   o->fuse_mount);
		if (rc == 0)
			rc = bks_export_start(w->fuse, err);
		if (rc < 0)
			return rc;
	}
	rc = resume_pause(w, err);
	if (rc < 0)
		return rc;
	rc = worker_ctl_new(&w->ctl, w, &ctl_ops, r->ctl_fd, err);
	if (rc < 0)
		return rc;
	rc = setup_signals(w, r, err);
	if (rc < 0)
		return rc;
	return write_pid(w, r, err);
}

/* Remove what start() created and close what it opened. */
static void cleanup(struct worker *w, struct res *r)
{
	char path[PATH_MAX + 16];
	struct bks_error ignore;

	if (w->ctl)
		worker_ctl_free(w->ctl);
	worker_blkif_free(w);
	bks_export_free(w->fuse);
	bks_export_free(w->nbd);
	stop_signals_stop(&r->sig);
	if (r->nbd_fd >= 0)
		close(r->nbd_fd);
	if (r->ctl_fd >= 0)
		close(r->ctl_fd);
	if (r->nbd_sock &&
	    !dir_path(w, "nbd.sock", path, sizeof(path), &ignore))
		unlink(path);
	if (r->ctl_sock &&
	    !dir_path(w, "ctl.sock", path, sizeof(path), &ignore))
		unlink(path);
	if (r->pid_file && !dir_path(w, "pid", path, sizeof(path), &ignore))
		unlink(path);
	if (w->chain) {
		/* After a forced stop, in-flight I/O may still reference it. */
		if (bks_chain_in_flight(w->chain) == 0)
			bks_chain_close(w->chain);
		else
			worker_log(
			    w, LOG_ERR, "%llu requests still in flight at exit",
			    (unsigned long long)bks_chain_in_flight(w->chain));
	}
	bks_timer_cancel(&w->stop_timer);
	worker_job_free(w);
	worker_live_free(w);
	worker_super_free(w->super);
	if (w->loop)
		bks_loop_free(w->loop);
	/*
	 * A graceful stop ends the disk's life: what a restart would have
	 * needed (pause, dirty logs) goes, while we hold the lock.  A crash
	 * or a failed start leaves it for the next worker of this name.
	 */
	if (w->state == WORKER_STOPPING && r->locked &&
	    worker_state_remove(w, &ignore) < 0)
		worker_log(w, LOG_ERR, "%s", ignore.msg);
	/*
	 * Released last: a new worker may take the name from here on.  Ours
	 * to remove while we hold it (take_lock re-checks the path); the
	 * directory goes too unless something else is still in it.
	 */
	if (r->locked && !dir_path(w, "lock", path, sizeof(path), &ignore)) {
		/* Unmounted by the export's shutdown; else EBUSY: it stays. */
		if (r->fuse_dir &&
		    !dir_path(w, WORKER_FILE_FUSE, path, sizeof(path), &ignore))
			rmdir(path);
		if (!dir_path(w, "lock", path, sizeof(path), &ignore))
			unlink(path);
		rmdir(w->dir);
	}
	if (r->lock_fd >= 0)
		close(r->lock_fd);
}

static void usage(FILE *f)
{
	fprintf(f,
		"usage: " PROG " --name NAME --chain CHAIN [--rundir DIR] "
		"[--read-only] [--foreground] [--ready-fd FD]\n"
		"  [--supervisor-fd FD] (given by blkstack-supervisor)\n"
		"  [--timeouts HANDSHAKE,STALL,CTL_IDLE] (ms; for tests)\n"
		"  [--io-engine auto|io_uring|libaio] (file I/O; default: "
		"conf io-engine, else auto)\n"
		"  [--fuse-mount DIR] (also serve the disk as DIR/disk)\n"
		"  [--fuse] (--fuse-mount DIR/NAME/fuse, made and removed by "
		"the worker)\n"
		"  [--fuse-fd FD] (given by blkstack-supervisor: adopt DIR's "
		"session)\n"
		"  [--fuse-transport auto|io_uring|readv] (FUSE requests: "
		"default auto)\n"
		"  DIR defaults to $BLKSTACK_RUNDIR, else " DEFAULT_RUNDIR "\n"
		"  --version: print the version and exit\n"
		"  CHAIN: see docs/chains.txt, e.g. 'log:|aio:/images/"
		"vm.img'\n");
}

/*
 * --timeouts H,S,C: three decimal millisecond counts (0: default), each
 * at most one day.  Returns 0 or -EINVAL.
 */
static int parse_timeouts(const char *arg, struct opts *o)
{
	unsigned int *dst[] = {&o->handshake_ms, &o->stall_ms, &o->ctl_idle_ms};
	const char *p = arg;

	for (size_t i = 0; i < sizeof(dst) / sizeof(dst[0]); i++) {
		char *end;
		unsigned long v;

		if (*p < '0' || *p > '9')
			return -EINVAL;
		errno = 0;
		v = strtoul(p, &end, 10);
		if (errno || v > 86400000ul)
			return -EINVAL;
		if (*end != (i + 1 < sizeof(dst) / sizeof(dst[0]) ? ',' : '\0'))
			return -EINVAL;
		*dst[i] = (unsigned int)v;
		p = end + 1;
	}
	return 0;
}

/* Returns 0, or HP-style 2 for a usage error (message printed). */
static int parse_opts(int argc, char **argv, struct opts *o)
{
	static const struct option longopts[] = {
	    WORKER_ARGS_OPTIONS,
	    {"foreground", no_argument, NULL, 'f'},
	    {"timeouts", required_argument, NULL, 'T'},
	    {"supervisor-fd", required_argument, NULL, 'S'},
	    {"io-engine", required_argument, NULL, 'E'},
	    {"fuse-mount", required_argument, NULL, 'M'},
	    {"fuse-fd", required_argument, NULL, 'U'},
	    {"fuse-transport", required_argument, NULL, 'X'},
	    {"help", no_argument, NULL, 'h'},
	    {"version", no_argument, NULL, 'V'},
	    {NULL, 0, NULL, 0},
	};
	int c, taken;

	while ((c = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
		taken =
		    worker_args_take(c, optarg, &o->spec, &o->ready_fd, PROG);
		if (taken < 0)
			return 2;
		if (taken)
			continue;
		switch (c) {
		case 'f':
			o->foreground = true;
			break;
		case 'S':
			if (ready_fd_parse(optarg, 3, &o->super_fd) < 0) {
				fprintf(stderr,
					PROG ": bad --supervisor-fd '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'T':
			if (parse_timeouts(optarg, o) < 0) {
				fprintf(stderr,
					PROG ": bad --timeouts '%s': three "
					     "numbers of milliseconds, "
					     "H,S,C (0: the default)\n",
					optarg);
				return 2;
			}
			break;
		case 'E':
			o->io_engine = optarg; /* checked at start: exit 1 */
			break;
		case 'M':
			if (optarg[0] != '/') {
				fprintf(stderr,
					PROG ": --fuse-mount takes an absolute "
					     "path, not '%s'\n",
					optarg);
				return 2;
			}
			o->fuse_mount = optarg;
			break;
		case 'X':
			o->fuse_transport = optarg; /* checked at start */
			break;
		case 'U':
			if (ready_fd_parse(optarg, 3, &o->fuse_fd) < 0) {
				fprintf(stderr, PROG ": bad --fuse-fd '%s'\n",
					optarg);
				return 2;
			}
			break;
		case 'h':
			usage(stdout);
			exit(0);
		case 'V':
			exit(bks_version_print(stdout, PROG) < 0 ? 1 : 0);
		default:
			usage(stderr);
			return 2;
		}
	}
	if (optind != argc || !o->spec.name || !o->spec.chain) {
		usage(stderr);
		return 2;
	}
	if (o->spec.fuse && o->fuse_mount) {
		fprintf(stderr, PROG ": --fuse and --fuse-mount exclude each "
				     "other\n");
		return 2;
	}
	if (o->fuse_fd >= 0 && !o->fuse_mount && !o->spec.fuse) {
		fprintf(stderr, PROG ": --fuse-fd needs --fuse-mount or "
				     "--fuse\n");
		return 2;
	}
	return worker_args_finish(&o->spec, PROG) < 0 ? 2 : 0;
}

int main(int argc, char **argv)
{
	struct opts o = {.ready_fd = -1, .super_fd = -1, .fuse_fd = -1};
	struct res r = {.lock_fd = -1,
			.nbd_fd = -1,
			.ctl_fd = -1,
			.sig = STOP_SIGNALS_INIT};
	struct worker w = {0};
	struct bks_error err = {0};
	int rc;

	rc = parse_opts(argc, argv, &o);
	if (rc)
		return rc;
	if (o.ready_fd >= 0 && fcntl(o.ready_fd, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, PROG ": --ready-fd %d: %m\n", o.ready_fd);
		return 2;
	}
	if (o.super_fd >= 0 && fcntl(o.super_fd, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, PROG ": --supervisor-fd %d: %m\n", o.super_fd);
		return 2;
	}
	if (o.fuse_fd >= 0 && fcntl(o.fuse_fd, F_SETFD, FD_CLOEXEC) < 0) {
		fprintf(stderr, PROG ": --fuse-fd %d: %m\n", o.fuse_fd);
		return 2;
	}
	close_inherited((const int[]){o.ready_fd, o.super_fd, o.fuse_fd}, 3);
	w.name = o.spec.name;
	w.chain_str = o.spec.chain;
	w.read_only = o.spec.read_only;
	w.vlog = worker_vlog;
	w.job_stopped = job_stopped;
	w.foreground = o.foreground;
	w.ctl_idle_ms = o.ctl_idle_ms;
	w.started_ns = bks_now_ns();
	/* Without it (out of memory), lines go to stderr. */
	if (!w.foreground &&
	    bks_syslog_open(&w.syslog, PROG, LOG_DAEMON, NULL, &err) < 0) {
		fprintf(stderr, PROG "[%s]: %s\n", w.name, err.msg);
		bks_error_clear(&err);
	}
	rc = start(&w, &o, &r, &err);
	if (rc < 0) {
		worker_log(&w, LOG_ERR, "%s", err.msg);
		if (!w.foreground)
			fprintf(stderr, PROG "[%s]: %s\n", w.name, err.msg);
		ready_report(o.ready_fd, &err);
		w.exit_code = 1;
		goto out;
	}
	worker_log(&w, LOG_INFO, "serving %s on %s/nbd.sock", w.chain_str,
		   w.dir);
	/* Beats begin before "ok": the supervisor's hang watch starts then. */
	if (o.super_fd >= 0 &&
	    worker_super_new(&w.super, &w, o.super_fd, &err) < 0) {
		worker_log(&w, LOG_ERR, "%s", err.msg);
		bks_error_clear(&err);
	}
	ready_report(o.ready_fd, NULL);
	rc = bks_loop_run(w.loop);
	if (rc < 0) {
		worker_log(&w, LOG_ERR, "event loop: %s", strerror(-rc));
		w.exit_code = 1;
	}
	worker_log(&w, LOG_INFO, "stopped");
out:
	cleanup(&w, &r);
	bks_syslog_close(w.syslog);
	return w.exit_code;
}
