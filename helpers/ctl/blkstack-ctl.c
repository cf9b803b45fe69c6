/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-ctl [--rundir DIR] COMMAND ...
 *
 * Start, inspect, pause and stop blkstack workers through their control
 * sockets (docs/control-protocol.txt): a command line over the control
 * client library of helpers/common/ (ctl-client.h, worker-run.h,
 * worker-list.h), which the hotplug helper links too.  The run directory
 * is --rundir, else $BLKSTACK_RUNDIR, else /run/blkstack; worker NAME
 * lives in DIR/NAME/{pid,nbd.sock,ctl.sock,lock}.
 *
 * Exit codes: 0 success, 1 failure (the reason is on stderr, naming the
 * worker), 2 usage error.
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"
#include "ctl-client.h"
#include "json.h"
#include "nbd-kernel.h"
#include "rundir.h"
#include "sibling.h"
#include "version.h"
#include "worker-list.h"
#include "worker-name.h"
#include "worker-run.h"

#define PROG	   "blkstack-ctl"
#define WORKER_EXE "blkstack-worker"

enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,
	EXIT_USAGE = 2
};

/* Largest `dirty --json` output we assemble. */
#define DIRTY_JSON_MAX (256u << 20)

/* Option bits, for the options each command accepts. */
enum {
	OPT_NAME = 1u << 0,
	OPT_CHAIN = 1u << 1,
	OPT_READ_ONLY = 1u << 2,
	OPT_JSON = 1u << 3,
	OPT_CLEAR = 1u << 4,
	OPT_OVERLAY = 1u << 5,
	OPT_FORMAT = 1u << 6,
	OPT_TOP = 1u << 7,
	OPT_BASE = 1u << 8,
	OPT_NO_WAIT = 1u << 9,
};

/* How often commit/stream poll `info`, and the most polls (a day). */
#define JOB_POLL_MS  200
#define JOB_POLL_MAX (24u * 3600 * 1000 / JOB_POLL_MS)

struct ctl {
	char rundir[PATH_MAX];
	const char *name;
	const char *chain;
	const char *overlay, *format, *top, *base;
	bool read_only, json, clear, no_wait;
};

/* ---- small helpers ------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: " PROG " [--rundir DIR] COMMAND [OPTIONS]\n"
	    "       " PROG " --version | --help\n"
	    "\n"
	    "  list [--json]                      the workers in DIR\n"
	    "  create --name NAME --chain CHAIN [--read-only]\n"
	    "                                     start a worker; prints "
	    "its NBD socket\n"
	    "  destroy --name NAME                stop it (idempotent)\n"
	    "  pause --name NAME                  hold new requests, wait "
	    "for in-flight ones\n"
	    "  unpause --name NAME\n"
	    "  info --name NAME [--json]\n"
	    "  stats --name NAME [--json]\n"
	    "  dirty --name NAME [--json]         dirty extents of the log: "
	    "layer\n"
	    "  dirty --name NAME --clear          mark everything clean\n"
	    "  reconnect --name NAME              reconnect its kernel NBD "
	    "devices\n"
	    "                                     whose connection died\n"
	    "  snapshot --name NAME --overlay NEW [--format qcow2|vhd] "
	    "[--json]\n"
	    "                                     put a new overlay on top, "
	    "live\n"
	    "  reopen --name NAME --chain CHAIN [--json]\n"
	    "                                     swap the images under the "
	    "worker\n"
	    "  commit --name NAME [--top IMG] [--base IMG] [--json] "
	    "[--no-wait]\n"
	    "                                     merge an image into the "
	    "one below\n"
	    "  stream --name NAME [--json] [--no-wait]\n"
	    "                                     pull the backing data up, "
	    "drop it\n"
	    "  cancel --name NAME [--json]        cancel the commit or "
	    "stream\n"
	    "\n"
	    "DIR: --rundir, else $BLKSTACK_RUNDIR, else " DEFAULT_RUNDIR ".\n"
	    "Exit: 0 ok, 1 failure, 2 usage.\n");
}

static void __attribute__((format(printf, 1, 2))) fail(const char *fmt, ...)
{
	va_list ap;

	fputs(PROG ": ", stderr);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

/* The reply line as received, for --json. */
static void print_reply(const struct ctl_client *cl)
{
	size_t len;
	const char *line = ctl_reply_line(cl, &len);

	fwrite(line, 1, len, stdout);
	fputc('\n', stdout);
}

/* ---- list ---------------------------------------------------------------- */

struct list_out {
	struct ctl *ctl;
	struct json_writer j;
};

/* The supervisor's part of a list line (" supervisor=none" without). */
static void print_supervisor(const struct worker_status *e)
{
	if (!e->supervised) {
		printf(" supervisor=none\n");
		return;
	}
	printf(" supervisor=%s restarts=%u", e->sup_state, e->restarts);
	if (e->last_exit[0])
		printf(" last_exit=\"%s\"", e->last_exit);
	if (e->hung[0])
		printf(" hung=\"%s\"", e->hung);
	if (e->gave_up[0])
		printf(" gave_up=\"%s\"", e->gave_up);
	printf("\n");
}

/* The supervisor's part of a list object: null without one. */
static void json_supervisor(struct json_writer *j,
			    const struct worker_status *e)
{
	json_key(j, "supervisor");
	if (!e->supervised) {
		json_null(j);
		return;
	}
	json_obj_begin(j);
	json_kv_str(j, "state", e->sup_state);
	json_key(j, "pid");
	if (e->sup_live)
		json_u64(j, (uint64_t)e->sup_pid);
	else
		json_null(j);
	json_kv_u64(j, "restarts", e->restarts);
	json_kv_str(j, "last_exit", e->last_exit);
	json_kv_str(j, "hung", e->hung);
	json_kv_str(j, "gave_up", e->gave_up);
	json_obj_end(j);
}

static int list_one(const struct worker_status *e, void *arg)
{
	struct list_out *lo = arg;
	struct json_writer *j = &lo->j;

	if (lo->ctl->json) {
		json_obj_begin(j);
		json_kv_str(j, "name", e->name);
		json_key(j, "pid");
		if (e->pid)
			json_u64(j, (uint64_t)e->pid);
		else
			json_null(j);
		json_kv_str(j, "state", e->state);
		if (e->live) {
			json_kv_str(j, "chain", e->chain);
			json_kv_u64(j, "size", e->size);
			json_kv_bool(j, "read_only", e->read_only);
		} else {
			json_kv_str(j, "error", e->why);
		}
		json_supervisor(j, e);
		json_obj_end(j);
		return 0;
	}
	if (e->live)
		printf("name=%s pid=%d state=%s chain=%s", e->name, (int)e->pid,
		       e->state, e->chain);
	else if (strcmp(e->state, "dead") == 0)
		printf("name=%s state=dead (%s)", e->name, e->why);
	else
		printf("name=%s pid=%d state=unreachable", e->name,
		       (int)e->pid);
	print_supervisor(e);
	return 0;
}

static int cmd_list(struct ctl *ctl)
{
	struct list_out lo = {.ctl = ctl};
	struct bks_error err = {0};
	int rc = EXIT_OK;

	json_writer_init(&lo.j, CTL_REPLY_MAX);
	json_arr_begin(&lo.j);
	if (worker_list(ctl->rundir, WORKER_LIST_TIMEOUT_MS, list_one, &lo,
			&err) < 0) {
		fail("%s", err.msg);
		rc = EXIT_FAIL;
		goto out;
	}
	json_arr_end(&lo.j);
	if (ctl->json) {
		if (json_error(&lo.j) < 0) {
			fail("list: %s", strerror(-json_error(&lo.j)));
			rc = EXIT_FAIL;
			goto out;
		}
		fwrite(lo.j.buf, 1, json_len(&lo.j), stdout);
		fputc('\n', stdout);
	}
out:
	json_writer_free(&lo.j);
	return rc;
}

/* ---- create and destroy -------------------------------------------------- */

static int cmd_create(struct ctl *ctl)
{
	struct worker_spec spec = {.rundir = ctl->rundir,
				   .name = ctl->name,
				   .chain = ctl->chain,
				   .read_only = ctl->read_only};
	char exe[PATH_MAX];
	struct bks_error err = {0};
	pid_t pid;

	/* The worker program: next to this one, never found through PATH. */
	if (sibling_path(exe, sizeof(exe), WORKER_EXE, NULL, &err) < 0) {
		fail("worker %s: %s", ctl->name, err.msg);
		return EXIT_FAIL;
	}
	spec.exe = exe;
	if (worker_start(&spec, &pid, &err) < 0) {
		fail("%s", err.msg);
		return EXIT_FAIL;
	}
	printf("%s/%s/" WORKER_FILE_NBD "\n", ctl->rundir, ctl->name);
	return EXIT_OK;
}

static int cmd_destroy(struct ctl *ctl)
{
	struct worker_stopped how;
	struct bks_error err = {0};

	if (worker_stop(ctl->rundir, ctl->name, WORKER_EXIT_TIMEOUT_MS, &how,
			&err) < 0) {
		fail("%s", err.msg);
		return EXIT_FAIL;
	}
	if (how.how != WORKER_STOPPED)
		fail("%s", how.note);
	return EXIT_OK;
}

/* ---- reconnect ----------------------------------------------------------- */

/*
 * After a worker was restarted by hand (its supervisor does this itself):
 * every /dev/nbdN made for DIR/NAME/nbd.sock whose connection died gets a
 * connection to the new worker (nbd-kernel.h).  Prints how many.
 */
static int cmd_reconnect(struct ctl *ctl)
{
	char sock[PATH_MAX];
	struct bks_error err = {0};
	unsigned int n;
	int len;

	len = snprintf(sock, sizeof(sock), "%s/%s/" WORKER_FILE_NBD,
		       ctl->rundir, ctl->name);
	if (len < 0 || (size_t)len >= sizeof(sock)) {
		fail("worker %s: NBD socket path too long", ctl->name);
		return EXIT_FAIL;
	}
	if (nbd_kernel_reconnect_all(sock, &n, &err) < 0) {
		fail("worker %s: %s", ctl->name, err.msg);
		return EXIT_FAIL;
	}
	printf("reconnected %u kernel NBD device%s\n", n, n == 1 ? "" : "s");
	return EXIT_OK;
}

/* ---- commands on a running worker ---------------------------------------- */

static void print_info(const struct ctl_client *cl)
{
	char s[BKS_CHAIN_STR_MAX + 1];
	int layers = json_get(&cl->doc, 0, "layers");

	printf("name:         %s\n",
	       ctl_reply_str(cl, 0, "name", s, sizeof(s)));
	printf("state:        %s\n",
	       ctl_reply_str(cl, 0, "state", s, sizeof(s)));
	printf("pid:          %" PRIu64 "\n", ctl_reply_u64(cl, 0, "pid"));
	printf("chain:        %s\n",
	       ctl_reply_str(cl, 0, "chain", s, sizeof(s)));
	printf("size:         %" PRIu64 " bytes\n",
	       ctl_reply_u64(cl, 0, "size"));
	printf("block size:   %" PRIu64 "\n",
	       ctl_reply_u64(cl, 0, "block_size"));
	printf("read-only:    %s\n",
	       json_is_true(&cl->doc, json_get(&cl->doc, 0, "read_only"))
		   ? "yes"
		   : "no");
	printf("uptime:       %" PRIu64 " s\n",
	       ctl_reply_u64(cl, 0, "uptime_s"));
	printf("connections:  %" PRIu64 "\n",
	       ctl_reply_u64(cl, 0, "connections"));
	printf("nbd socket:   %s\n",
	       ctl_reply_str(cl, 0, "nbd_socket", s, sizeof(s)));
	printf("io engine:    %s\n",
	       ctl_reply_str(cl, 0, "io_engine", s, sizeof(s)));
	printf("layers:      ");
	if (layers >= 0 && cl->doc.toks[layers].type == JSON_ARRAY) {
		unsigned int k = (unsigned int)layers + 1;

		for (unsigned int i = 0; i < cl->doc.toks[layers].count; i++) {
			json_get_str(&cl->doc, (int)k, s, sizeof(s));
			bks_sanitize_line(s);
			printf(" %s", s);
			k = cl->doc.toks[k].next;
		}
	}
	printf("\n");
}

/* Print "  KEY VALUE" for each number of object obj, on one line. */
static void print_counters(const struct ctl_client *cl, int obj)
{
	const struct json_doc *d = &cl->doc;
	char key[64];
	unsigned int k;

	if (obj < 0 || d->toks[obj].type != JSON_OBJECT)
		return;
	k = (unsigned int)obj + 1;
	for (unsigned int i = 0; i < d->toks[obj].count; i++) {
		uint64_t v;

		json_get_str(d, (int)k, key, sizeof(key));
		bks_sanitize_line(key);
		if (json_get_u64(d, (int)k + 1, &v) == 0)
			printf(" %s %" PRIu64, key, v);
		k = d->toks[k + 1].next;
	}
}

static void print_stats(const struct ctl_client *cl)
{
	const struct json_doc *d = &cl->doc;
	int w = json_get(d, 0, "worker"), nbd = json_get(d, 0, "nbd");
	int layers = json_get(d, 0, "layers");
	char s[64];

	printf("worker %s: %s, %" PRIu64 " pauses, %" PRIu64
	       " ms paused, up %" PRIu64 " s\n",
	       cl->name, ctl_reply_str(cl, w, "state", s, sizeof(s)),
	       ctl_reply_u64(cl, w, "pauses"),
	       ctl_reply_u64(cl, w, "paused_ms"),
	       ctl_reply_u64(cl, w, "uptime_s"));
	printf("nbd:");
	print_counters(cl, nbd);
	printf("\n");
	if (layers < 0 || d->toks[layers].type != JSON_ARRAY)
		return;
	for (unsigned int i = 0, l = (unsigned int)layers + 1;
	     i < d->toks[layers].count; i++, l = d->toks[l].next) {
		int ops = json_get(d, (int)l, "ops");
		char driver[BKS_DRIVER_NAME_MAX + 1];

		ctl_reply_str(cl, (int)l, "driver", driver, sizeof(driver));
		printf("layer %" PRIu64 " %s: %" PRIu64 " in flight\n",
		       ctl_reply_u64(cl, (int)l, "index"), driver,
		       ctl_reply_u64(cl, (int)l, "in_flight"));
		if (ops >= 0 && d->toks[ops].type == JSON_OBJECT) {
			unsigned int k = (unsigned int)ops + 1;

			for (unsigned int o = 0; o < d->toks[ops].count; o++) {
				int v = (int)k + 1;

				json_get_str(d, (int)k, s, sizeof(s));
				bks_sanitize_line(s);
				printf("  %-13s %12" PRIu64 " ops %16" PRIu64
				       " bytes %8" PRIu64 " errors\n",
				       s, ctl_reply_u64(cl, v, "ops"),
				       ctl_reply_u64(cl, v, "bytes"),
				       ctl_reply_u64(cl, v, "errors"));
				k = d->toks[v].next;
			}
		}
		/* The driver's own counters, under its name. */
		if (json_get(d, (int)l, driver) >= 0) {
			printf("  %-13s", driver);
			print_counters(cl, json_get(d, (int)l, driver));
			printf("\n");
		}
	}
}

/* `dirty`, following "next" to the end. */
static int dirty_all(struct ctl *ctl, struct ctl_client *cl)
{
	struct json_writer j;
	struct bks_error err = {0};
	char cmd[64] = "dirty";
	uint64_t start = 0, block = 0;
	bool first = true;
	int rc = EXIT_FAIL;

	json_writer_init(&j, DIRTY_JSON_MAX);
	json_obj_begin(&j);
	json_kv_bool(&j, "ok", true);
	for (;;) {
		const struct json_doc *d = &cl->doc;
		int ext, next;
		uint64_t nv;

		if (ctl_client_call(cl, cmd, &err) < 0) {
			fail("worker %s: %s", ctl->name, err.msg);
			goto out;
		}
		ext = json_get(d, 0, "extents");
		next = json_get(d, 0, "next");
		if (ext < 0 || d->toks[ext].type != JSON_ARRAY || next < 0) {
			fail("worker %s: dirty: malformed reply", ctl->name);
			goto out;
		}
		if (first) {
			block = ctl_reply_u64(cl, 0, "block_size");
			json_kv_u64(&j, "block_size", block);
			json_key(&j, "extents");
			json_arr_begin(&j);
			first = false;
		}
		for (unsigned int i = 0, e = (unsigned int)ext + 1;
		     i < d->toks[ext].count; i++, e = d->toks[e].next) {
			uint64_t off = 0, len = 0;

			if (d->toks[e].type != JSON_ARRAY ||
			    d->toks[e].count != 2 ||
			    json_get_u64(d, (int)e + 1, &off) < 0 ||
			    json_get_u64(d, (int)e + 2, &len) < 0) {
				fail("worker %s: dirty: malformed extent",
				     ctl->name);
				goto out;
			}
			if (ctl->json) {
				json_arr_begin(&j);
				json_u64(&j, off);
				json_u64(&j, len);
				json_arr_end(&j);
			} else {
				printf("%" PRIu64 " %" PRIu64 "\n", off, len);
			}
		}
		if (d->toks[next].type == JSON_NULL)
			break;
		/* Only forward: a confused worker cannot loop us. */
		if (json_get_u64(d, next, &nv) < 0 || nv <= start) {
			fail("worker %s: dirty: bad \"next\"", ctl->name);
			goto out;
		}
		start = nv;
		snprintf(cmd, sizeof(cmd), "dirty %" PRIu64, start);
	}
	json_arr_end(&j);
	json_obj_end(&j);
	if (ctl->json) {
		if (json_error(&j) < 0) {
			fail("worker %s: dirty: %s", ctl->name,
			     strerror(-json_error(&j)));
			goto out;
		}
		fwrite(j.buf, 1, json_len(&j), stdout);
		fputc('\n', stdout);
	}
	rc = EXIT_OK;
out:
	json_writer_free(&j);
	return rc;
}

/* pause, unpause, info, stats, dirty: one connection, one or more calls. */
static int cmd_worker(struct ctl *ctl, const char *cmd)
{
	struct ctl_client cl;
	struct bks_error err = {0};
	int rc = EXIT_FAIL;

	if (ctl_client_open(&cl, ctl->rundir, ctl->name, CTL_CALL_TIMEOUT_MS,
			    &err) < 0) {
		fail("worker %s: %s", ctl->name, err.msg);
		goto out;
	}
	if (strcmp(cmd, "dirty") == 0 && !ctl->clear) {
		rc = dirty_all(ctl, &cl);
		goto out;
	}
	if (strcmp(cmd, "dirty") == 0)
		cmd = "clear-dirty";
	if (ctl_client_call(&cl, cmd, &err) < 0) {
		fail("worker %s: %s", ctl->name, err.msg);
		goto out;
	}
	if (ctl->json)
		print_reply(&cl);
	else if (strcmp(cmd, "info") == 0)
		print_info(&cl);
	else if (strcmp(cmd, "stats") == 0)
		print_stats(&cl);
	rc = EXIT_OK;
out:
	ctl_client_close(&cl);
	return rc;
}

/* ---- live operations ----------------------------------------------------- */

/* "1.5 GiB": n bytes in a short human form. */
static const char *human(uint64_t n, char *buf, size_t size)
{
	static const char *const units[] = {"B", "KiB", "MiB", "GiB", "TiB"};
	double v = (double)n;
	unsigned int u = 0;

	while (v >= 1024 && u + 1 < sizeof(units) / sizeof(*units)) {
		v /= 1024;
		u++;
	}
	if (u == 0)
		snprintf(buf, size, "%" PRIu64 " B", n);
	else
		snprintf(buf, size, "%.1f %s", v, units[u]);
	return buf;
}

/*
 * One progress report of a job: a \r-updated bar on a terminal, else a
 * line ("commit: 41% 420.0 MiB/1.0 GiB") at most about once a second.
 */
static void show_progress(const char *kind, const char *phase, uint64_t done,
			  uint64_t total, uint64_t elapsed_ms, bool tty,
			  uint64_t *last_line_ms)
{
	char a[32], b[32], r[32];
	unsigned int pct =
	    total ? (unsigned int)(done >= total ? 100 : done * 100 / total)
		  : 0;

	if (tty) {
		char bar[31];
		unsigned int fill = pct * 30 / 100;

		memset(bar, '#', fill);
		memset(bar + fill, '-', 30 - fill);
		bar[30] = '\0';
		fprintf(stderr, "\r%s [%s] %3u%% %s/%s %s/s %-10s", kind, bar,
			pct, human(done, a, sizeof(a)),
			human(total, b, sizeof(b)),
			human(elapsed_ms ? done * 1000 / elapsed_ms : 0, r,
			      sizeof(r)),
			phase);
		fflush(stderr);
		return;
	}
	if (*last_line_ms && elapsed_ms < *last_line_ms + 1000)
		return;
	*last_line_ms = elapsed_ms ? elapsed_ms : 1;
	printf("%s: %u%% %s/%s (%s)\n", kind, pct, human(done, a, sizeof(a)),
	       human(total, b, sizeof(b)), phase);
	fflush(stdout);
}

/* Sleep ms, a bounded poll interval (not a timed assertion). */
static void nap(unsigned int ms)
{
	struct timespec ts = {.tv_sec = ms / 1000,
			      .tv_nsec = (long)(ms % 1000) * 1000000L};

	while (nanosleep(&ts, &ts) < 0 && errno == EINTR)
		;
}

/*
 * Wait for the job kind started on cl to end, polling `info`: progress on
 * the way (not with --json), then the result from "last_job".
 */
static int job_wait(struct ctl *ctl, struct ctl_client *cl, const char *kind)
{
	bool tty = !ctl->json && isatty(STDERR_FILENO) && isatty(STDOUT_FILENO);
	struct bks_error err = {0};
	uint64_t last_line = 0;
	char res[64], msg[BKS_ERROR_MSG_MAX];

	for (unsigned int i = 0; i < JOB_POLL_MAX; i++) {
		const struct json_doc *d = &cl->doc;
		int job, last;
		char phase[32];

		if (ctl_client_call(cl, "info", &err) < 0) {
			if (tty)
				fputc('\n', stderr);
			fail("worker %s: %s", ctl->name, err.msg);
			return EXIT_FAIL;
		}
		job = json_get(d, 0, "job");
		if (job >= 0 && d->toks[job].type == JSON_OBJECT) {
			if (!ctl->json)
				show_progress(
				    kind,
				    ctl_reply_str(cl, job, "phase", phase,
						  sizeof(phase)),
				    ctl_reply_u64(cl, job, "done_bytes"),
				    ctl_reply_u64(cl, job, "total_bytes"),
				    ctl_reply_u64(cl, job, "elapsed_ms"), tty,
				    &last_line);
			nap(JOB_POLL_MS);
			continue;
		}
		if (tty)
			fputc('\n', stderr);
		last = json_get(d, 0, "last_job");
		if (last < 0 || d->toks[last].type != JSON_OBJECT) {
			fail("worker %s: %s: the job left no result", ctl->name,
			     kind);
			return EXIT_FAIL;
		}
		ctl_reply_str(cl, last, "result", res, sizeof(res));
		ctl_reply_str(cl, last, "error", msg, sizeof(msg));
		if (ctl->json) {
			/* The job's end, as one object. */
			struct json_writer j;
			int ok = strcmp(res, "ok") == 0;

			json_writer_init(&j, 1u << 16);
			json_obj_begin(&j);
			json_kv_bool(&j, "ok", ok);
			json_kv_str(&j, "job", kind);
			json_kv_str(&j, "result", res);
			if (!ok)
				json_kv_str(&j, "error", msg);
			json_kv_u64(&j, "done_bytes",
				    ctl_reply_u64(cl, last, "done_bytes"));
			json_kv_u64(&j, "held_ms",
				    ctl_reply_u64(cl, last, "held_ms"));
			json_kv_u64(&j, "elapsed_ms",
				    ctl_reply_u64(cl, last, "elapsed_ms"));
			json_obj_end(&j);
			if (json_error(&j) == 0) {
				fwrite(j.buf, 1, json_len(&j), stdout);
				fputc('\n', stdout);
			}
			json_writer_free(&j);
		}
		if (strcmp(res, "ok") != 0) {
			fail("worker %s: %s %s: %s", ctl->name, kind,
			     strcmp(res, "cancelled") == 0 ? "cancelled"
							   : "failed",
			     msg);
			return EXIT_FAIL;
		}
		if (!ctl->json) {
			char a[32];

			printf("%s: done, %s copied, I/O held %" PRIu64 " ms\n",
			       kind,
			       human(ctl_reply_u64(cl, last, "done_bytes"), a,
				     sizeof(a)),
			       ctl_reply_u64(cl, last, "held_ms"));
		}
		return EXIT_OK;
	}
	fail("worker %s: %s: still running after %u polls; giving up "
	     "waiting (it goes on)",
	     ctl->name, kind, JOB_POLL_MAX);
	return EXIT_FAIL;
}

/* snapshot, reopen, commit, stream, cancel. */
static int cmd_live(struct ctl *ctl, const char *cmd)
{
	struct ctl_client cl;
	struct bks_error err = {0};
	char line[BKS_CHAIN_STR_MAX + PATH_MAX + 64];
	bool job = strcmp(cmd, "commit") == 0 || strcmp(cmd, "stream") == 0;
	int rc = EXIT_FAIL, n;

	if (strcmp(cmd, "snapshot") == 0)
		n = snprintf(line, sizeof(line), "snapshot %s%s%s",
			     ctl->overlay, ctl->format ? " " : "",
			     ctl->format ? ctl->format : "");
	else if (strcmp(cmd, "reopen") == 0)
		n = snprintf(line, sizeof(line), "reopen %s", ctl->chain);
	else if (strcmp(cmd, "commit") == 0)
		n = snprintf(line, sizeof(line), "commit%s%s%s%s",
			     ctl->top || ctl->base ? " " : "",
			     ctl->top ? ctl->top : (ctl->base ? "-" : ""),
			     ctl->base ? " " : "", ctl->base ? ctl->base : "");
	else
		n = snprintf(line, sizeof(line), "%s", cmd);
	if (n < 0 || (size_t)n >= sizeof(line)) {
		fail("%s: the arguments are too long", cmd);
		return EXIT_USAGE;
	}
	if (ctl_client_open(&cl, ctl->rundir, ctl->name, CTL_CALL_TIMEOUT_MS,
			    &err) < 0) {
		fail("worker %s: %s", ctl->name, err.msg);
		goto out;
	}
	if (ctl_client_call(&cl, line, &err) < 0) {
		size_t len = 0;

		/* --json: the worker's failure reply too, when there is one
		 * (not for a timeout or a dropped connection). */
		ctl_reply_line(&cl, &len);
		if (ctl->json && len && err.code != ETIMEDOUT &&
		    err.code != ECONNRESET && err.code != EPROTO)
			print_reply(&cl);
		fail("worker %s: %s", ctl->name, err.msg);
		goto out;
	}
	if (job && !ctl->no_wait) {
		rc = job_wait(ctl, &cl, cmd);
		goto out;
	}
	if (ctl->json) {
		print_reply(&cl);
	} else if (strcmp(cmd, "snapshot") == 0 || strcmp(cmd, "reopen") == 0) {
		char s[BKS_CHAIN_STR_MAX + 1];

		printf("%s: serving %s (I/O held %" PRIu64 " us)\n", cmd,
		       ctl_reply_str(&cl, 0, "chain", s, sizeof(s)),
		       ctl_reply_u64(&cl, 0, "held_us"));
	} else if (strcmp(cmd, "cancel") == 0) {
		char s[32];

		printf("cancel: the job %s\n",
		       strcmp(ctl_reply_str(&cl, 0, "result", s, sizeof(s)),
			      "cancelled") == 0
			   ? "was cancelled"
			   : "had ended already");
	} else {
		printf("%s: started\n", cmd);
	}
	rc = EXIT_OK;
out:
	ctl_client_close(&cl);
	return rc;
}

/* ---- main ---------------------------------------------------------------- */

static const struct command {
	const char *name;
	unsigned int required, allowed;
} commands[] = {
    {"list", 0, OPT_JSON},
    {"create", OPT_NAME | OPT_CHAIN, OPT_NAME | OPT_CHAIN | OPT_READ_ONLY},
    {"destroy", OPT_NAME, OPT_NAME},
    {"pause", OPT_NAME, OPT_NAME},
    {"unpause", OPT_NAME, OPT_NAME},
    {"info", OPT_NAME, OPT_NAME | OPT_JSON},
    {"stats", OPT_NAME, OPT_NAME | OPT_JSON},
    {"dirty", OPT_NAME, OPT_NAME | OPT_JSON | OPT_CLEAR},
    {"reconnect", OPT_NAME, OPT_NAME},
    {"snapshot", OPT_NAME | OPT_OVERLAY,
     OPT_NAME | OPT_OVERLAY | OPT_FORMAT | OPT_JSON},
    {"reopen", OPT_NAME | OPT_CHAIN, OPT_NAME | OPT_CHAIN | OPT_JSON},
    {"commit", OPT_NAME,
     OPT_NAME | OPT_TOP | OPT_BASE | OPT_JSON | OPT_NO_WAIT},
    {"stream", OPT_NAME, OPT_NAME | OPT_JSON | OPT_NO_WAIT},
    {"cancel", OPT_NAME, OPT_NAME | OPT_JSON},
};

static const struct option long_opts[] = {
    {"rundir", required_argument, NULL, 'r'},
    {"name", required_argument, NULL, 'n'},
    {"chain", required_argument, NULL, 'c'},
    {"read-only", no_argument, NULL, 'R'},
    {"json", no_argument, NULL, 'j'},
    {"clear", no_argument, NULL, 'C'},
    {"overlay", required_argument, NULL, 'O'},
    {"format", required_argument, NULL, 'F'},
    {"top", required_argument, NULL, 'T'},
    {"base", required_argument, NULL, 'B'},
    {"no-wait", no_argument, NULL, 'W'},
    {"help", no_argument, NULL, 'h'},
    {"version", no_argument, NULL, 'V'},
    {NULL, 0, NULL, 0},
};

/* Make DIR absolute: the worker must not depend on our cwd. */
static int set_rundir(struct ctl *ctl, const char *dir)
{
	char cwd[PATH_MAX];
	int n;

	if (!*dir) {
		fail("the run directory is empty");
		return -EINVAL;
	}
	if (dir[0] == '/') {
		n = snprintf(ctl->rundir, sizeof(ctl->rundir), "%s", dir);
	} else {
		if (!getcwd(cwd, sizeof(cwd))) {
			fail("getcwd: %m");
			return -errno;
		}
		n = snprintf(ctl->rundir, sizeof(ctl->rundir), "%s/%s", cwd,
			     dir);
	}
	if (n < 0 || (size_t)n >= sizeof(ctl->rundir)) {
		fail("run directory %s: path too long", dir);
		return -ENAMETOOLONG;
	}
	/* "DIR/" and "DIR" are the same directory; keep paths tidy. */
	while (n > 1 && ctl->rundir[n - 1] == '/')
		ctl->rundir[--n] = '\0';
	return 0;
}

/*
 * fds 0-2 open, so that no file of ours (the readiness pipe) lands on
 * one of them and is then clobbered by the worker's /dev/null.
 */
static void ensure_stdio(void)
{
	int fd;

	do {
		fd = open("/dev/null", O_RDWR);
	} while (fd >= 0 && fd <= 2);
	if (fd > 2)
		close(fd);
}

int main(int argc, char **argv)
{
	struct ctl ctl = {0};
	const struct command *cmd = NULL;
	const char *rundir = NULL;
	unsigned int given = 0;
	int opt;

	ensure_stdio();
	/* Options before the command: only --rundir and --help. */
	while ((opt = getopt_long(argc, argv, "+h", long_opts, NULL)) != -1) {
		if (opt == 'r') {
			rundir = optarg;
		} else if (opt == 'h') {
			usage(stdout);
			return EXIT_OK;
		} else if (opt == 'V') {
			return bks_version_print(stdout, PROG) < 0 ? EXIT_FAIL
								   : EXIT_OK;
		} else {
			usage(stderr);
			return EXIT_USAGE;
		}
	}
	if (optind >= argc) {
		usage(stderr);
		return EXIT_USAGE;
	}
	for (size_t i = 0; i < sizeof(commands) / sizeof(*commands); i++) {
		if (strcmp(argv[optind], commands[i].name) == 0)
			cmd = &commands[i];
	}
	if (!cmd) {
		fail("unknown command '%s' (try --help)", argv[optind]);
		return EXIT_USAGE;
	}
	/* The command's options: parse argv from the command on. */
	argv += optind;
	argc -= optind;
	optind = 1;
	while ((opt = getopt_long(argc, argv, "h", long_opts, NULL)) != -1) {
		unsigned int bit = 0;

		switch (opt) {
		case 'r':
			rundir = optarg;
			break;
		case 'n':
			ctl.name = optarg;
			bit = OPT_NAME;
			break;
		case 'c':
			ctl.chain = optarg;
			bit = OPT_CHAIN;
			break;
		case 'R':
			ctl.read_only = true;
			bit = OPT_READ_ONLY;
			break;
		case 'j':
			ctl.json = true;
			bit = OPT_JSON;
			break;
		case 'C':
			ctl.clear = true;
			bit = OPT_CLEAR;
			break;
		case 'O':
			ctl.overlay = optarg;
			bit = OPT_OVERLAY;
			break;
		case 'F':
			ctl.format = optarg;
			bit = OPT_FORMAT;
			break;
		case 'T':
			ctl.top = optarg;
			bit = OPT_TOP;
			break;
		case 'B':
			ctl.base = optarg;
			bit = OPT_BASE;
			break;
		case 'W':
			ctl.no_wait = true;
			bit = OPT_NO_WAIT;
			break;
		case 'h':
			usage(stdout);
			return EXIT_OK;
		default:
			usage(stderr);
			return EXIT_USAGE;
		}
		if (bit && !(cmd->allowed & bit)) {
			fail("%s: option %s does not apply", cmd->name,
			     argv[optind - 1]);
			return EXIT_USAGE;
		}
		given |= bit;
	}
	if (optind < argc) {
		fail("%s: unexpected argument '%s'", cmd->name, argv[optind]);
		return EXIT_USAGE;
	}
	if ((given & cmd->required) != cmd->required) {
		unsigned int miss = cmd->required & ~given;

		fail("%s: needs %s", cmd->name,
		     (miss & OPT_NAME)	  ? "--name NAME"
		     : (miss & OPT_CHAIN) ? "--chain CHAIN"
					  : "--overlay NEW");
		return EXIT_USAGE;
	}
	if (ctl.overlay && ctl.overlay[0] != '/') {
		fail("snapshot: --overlay must be an absolute path");
		return EXIT_USAGE;
	}
	if (ctl.format && strcmp(ctl.format, "qcow2") != 0 &&
	    strcmp(ctl.format, "vhd") != 0) {
		fail("snapshot: --format: qcow2 or vhd, not '%s'", ctl.format);
		return EXIT_USAGE;
	}
	{
		const char *paths[] = {ctl.overlay, ctl.top, ctl.base};

		for (size_t i = 0; i < sizeof(paths) / sizeof(*paths); i++) {
			if (paths[i] && strpbrk(paths[i], " \t\r\n")) {
				fail("%s: a path with white space cannot be "
				     "passed",
				     cmd->name);
				return EXIT_USAGE;
			}
		}
	}
	if (ctl.clear && ctl.json) {
		fail("dirty: --clear and --json do not go together");
		return EXIT_USAGE;
	}
	/* Before any path is built from it. */
	if (ctl.name && !worker_name_valid(ctl.name)) {
		fail("invalid worker name '%.80s' ([A-Za-z0-9_.-]{1,%d}, not "
		     "'.' or '..')",
		     ctl.name, WORKER_NAME_MAX);
		return EXIT_USAGE;
	}
	if (!rundir)
		rundir = getenv("BLKSTACK_RUNDIR");
	if (!rundir || !*rundir)
		rundir = DEFAULT_RUNDIR;
	if (set_rundir(&ctl, rundir) < 0)
		return EXIT_USAGE;

	if (strcmp(cmd->name, "list") == 0)
		return cmd_list(&ctl);
	if (strcmp(cmd->name, "create") == 0)
		return cmd_create(&ctl);
	if (strcmp(cmd->name, "destroy") == 0)
		return cmd_destroy(&ctl);
	if (strcmp(cmd->name, "reconnect") == 0)
		return cmd_reconnect(&ctl);
	if (strcmp(cmd->name, "snapshot") == 0 ||
	    strcmp(cmd->name, "reopen") == 0 ||
	    strcmp(cmd->name, "commit") == 0 ||
	    strcmp(cmd->name, "stream") == 0 ||
	    strcmp(cmd->name, "cancel") == 0)
		return cmd_live(&ctl, cmd->name);
	return cmd_worker(&ctl, cmd->name);
}
