/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-ctl [--rundir DIR] COMMAND ...
 *
 * Start, inspect, pause and stop blkstack workers through their control
 * sockets (docs/control-protocol.txt).  The run directory is --rundir,
 * else $BLKSTACK_RUNDIR, else /run/blkstack; worker NAME lives in
 * DIR/NAME/{pid,nbd.sock,ctl.sock,lock}.
 *
 * Exit codes: 0 success, 1 failure (the reason is on stderr, naming the
 * worker), 2 usage error.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/pidfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"
#include "json.h"
#include "worker-name.h"

#define PROG	       "blkstack-ctl"
#define DEFAULT_RUNDIR "/run/blkstack"
#define WORKER_EXE     "blkstack-worker"

enum {
	EXIT_OK = 0,
	EXIT_FAIL = 1,
	EXIT_USAGE = 2
};

/* How long one command may take the worker to answer. */
#define CALL_TIMEOUT_MS 30000
/* The same while listing: one hung worker must not stall the listing. */
#define LIST_TIMEOUT_MS 5000
/* How long a new worker may take to open its chain and report ready. */
#define READY_TIMEOUT_MS 30000
/* How long a worker may take to exit after `shutdown` or a failed start. */
#define EXIT_TIMEOUT_MS 30000
/* Largest reply line we accept from a worker. */
#define REPLY_MAX (4u << 20)
/* Largest `dirty --json` output we assemble. */
#define DIRTY_JSON_MAX (256u << 20)
/* The files a worker keeps in DIR/NAME. */
static const char *const worker_files[] = {"pid", "nbd.sock", "ctl.sock",
					   "lock"};

/* Option bits, for the options each command accepts. */
enum {
	OPT_NAME = 1u << 0,
	OPT_CHAIN = 1u << 1,
	OPT_READ_ONLY = 1u << 2,
	OPT_JSON = 1u << 3,
	OPT_CLEAR = 1u << 4,
};

struct ctl {
	char rundir[PATH_MAX];
	const char *name;
	const char *chain;
	bool read_only, json, clear;
	struct bks_error err;
};

/* A connection to a worker's control socket. */
struct client {
	int fd;
	const char *name;
	int timeout_ms;
	char *buf; /* received bytes; the current reply line first */
	size_t len, cap;
	size_t line_len; /* of the current reply, without its "\n" */
	bool have_line;	 /* buf starts with a reply already handled */
	struct json_doc doc;
};

/* ---- small helpers ------------------------------------------------------- */

static void usage(FILE *f)
{
	fprintf(
	    f,
	    "usage: " PROG " [--rundir DIR] COMMAND [OPTIONS]\n"
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

/* DIR/NAME[/FILE] into buf.  Returns 0 or -ENAMETOOLONG with err set. */
static int worker_path(char *buf, size_t size, struct ctl *ctl,
		       const char *name, const char *file)
{
	int n = file ? snprintf(buf, size, "%s/%s/%s", ctl->rundir, name, file)
		     : snprintf(buf, size, "%s/%s", ctl->rundir, name);

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(&ctl->err, ENAMETOOLONG,
					"path %s/%s is too long", ctl->rundir,
					name);
	return 0;
}

/* Milliseconds left until deadline_ns (CLOCK_MONOTONIC), at least 0. */
static int ms_left(uint64_t deadline_ns)
{
	struct timespec ts;
	uint64_t now;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	if (now >= deadline_ns)
		return 0;
	return (int)((deadline_ns - now + 999999) / 1000000);
}

static uint64_t deadline_in(int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec +
	       (uint64_t)ms * 1000000u;
}

/*
 * The pid in DIR/NAME/pid.  Returns the pid, 0 if there is no pid file,
 * or -errno (-EINVAL for a file that does not hold a pid).
 */
static int read_pid(struct ctl *ctl, const char *name)
{
	char path[PATH_MAX], buf[32], *end;
	ssize_t n;
	long v;
	int fd, rc;

	rc = worker_path(path, sizeof(path), ctl, name, "pid");
	if (rc < 0)
		return rc;
	fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (fd < 0)
		return errno == ENOENT ? 0 : -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	rc = n < 0 ? -errno : 0;
	close(fd);
	if (rc < 0)
		return rc;
	buf[n] = '\0';
	errno = 0;
	v = strtol(buf, &end, 10);
	if (errno || end == buf || (*end && *end != '\n') || v <= 0 ||
	    v > INT_MAX)
		return -EINVAL;
	return (int)v;
}

/*
 * Is pid a running blkstack worker?  Its comm says so; a pid file can
 * outlive its worker, and the pid be reused by something else.
 */
static bool pid_is_worker(int pid)
{
	char path[64], comm[32] = "";
	ssize_t n;
	int fd;

	if (pid <= 0 || (kill(pid, 0) < 0 && errno != EPERM))
		return false;
	/* A zombie (killed, not yet reaped by its new parent) is dead. */
	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		char stat[512], *paren;

		n = read(fd, stat, sizeof(stat) - 1);
		close(fd);
		stat[n > 0 ? n : 0] = '\0';
		/* "PID (COMM) S ...": COMM may hold ')', so the last one. */
		paren = strrchr(stat, ')');
		if (paren && paren[1] == ' ' &&
		    (paren[2] == 'Z' || paren[2] == 'X'))
			return false;
	}
	snprintf(path, sizeof(path), "/proc/%d/comm", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return true; /* alive; /proc cannot say more */
	n = read(fd, comm, sizeof(comm) - 1);
	close(fd);
	if (n <= 0)
		return true;
	comm[n] = '\0';
	comm[strcspn(comm, "\n")] = '\0';
	/* comm holds at most 15 bytes: exactly "blkstack-worker". */
	return strncmp(comm, WORKER_EXE, 15) == 0;
}

/*
 * Wait for pid (a pidfd) to exit, up to timeout_ms.  Returns 0, or
 * -ETIMEDOUT, or -errno.
 */
static int wait_pidfd(int pidfd, int timeout_ms)
{
	uint64_t deadline = deadline_in(timeout_ms);

	for (;;) {
		struct pollfd p = {.fd = pidfd, .events = POLLIN};
		int n = poll(&p, 1, ms_left(deadline));

		if (n > 0)
			return 0;
		if (n == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/*
 * Wait, up to timeout_ms, for the peer of socket fd to close it (what it
 * still sends is dropped).  Returns 0, -ETIMEDOUT or -errno.
 */
static int wait_eof(int fd, int timeout_ms)
{
	uint64_t deadline = deadline_in(timeout_ms);
	char buf[4096];

	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		int n = poll(&p, 1, ms_left(deadline));
		ssize_t r;

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ETIMEDOUT;
		r = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno == ECONNRESET))
			return 0;
		if (r < 0 && errno != EINTR && errno != EAGAIN)
			return -errno;
	}
}

/* "exited with status 3", "killed by signal 9 (Killed)". */
static void describe_status(char *buf, size_t size, int status)
{
	if (WIFEXITED(status))
		snprintf(buf, size, "exited with status %d",
			 WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, size, "killed by signal %d (%s)",
			 WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(buf, size, "ended with wait status %#x", status);
}

/*
 * Remove what a dead worker left in DIR/NAME, and the directory.  The
 * worker's lock (flock on DIR/NAME/lock) is taken first, so that files a
 * live worker holds -- one starting, or one we could not reach -- are
 * never removed.  Returns 0, -EBUSY if a worker holds the lock, or -errno;
 * err set.
 */
static int remove_worker_files(struct ctl *ctl, const char *name)
{
	char path[PATH_MAX];
	int rc, lock_fd = -1;

	rc = worker_path(path, sizeof(path), ctl, name, "lock");
	if (rc < 0)
		goto out;
	lock_fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	if (lock_fd < 0 && errno != ENOENT) {
		rc = bks_error_set(&ctl->err, errno, "open %s", path);
		goto out;
	}
	if (lock_fd >= 0 && flock(lock_fd, LOCK_EX | LOCK_NB) < 0) {
		if (errno == EWOULDBLOCK)
			rc =
			    bks_error_setmsg(&ctl->err, EBUSY,
					     "a running worker holds %s", path);
		else
			rc = bks_error_set(&ctl->err, errno, "lock %s", path);
		goto out;
	}
	if (lock_fd >= 0) {
		struct stat fst, pst;

		/*
		 * The exiting worker removed the file we locked: whatever is
		 * at the path now (a new worker's) is not ours to remove.
		 */
		if (fstat(lock_fd, &fst) < 0 || lstat(path, &pst) < 0 ||
		    fst.st_dev != pst.st_dev || fst.st_ino != pst.st_ino) {
			rc = 0;
			goto out;
		}
	}
	for (size_t i = 0; i < sizeof(worker_files) / sizeof(*worker_files);
	     i++) {
		rc =
		    worker_path(path, sizeof(path), ctl, name, worker_files[i]);
		if (rc < 0)
			goto out;
		if (unlink(path) < 0 && errno != ENOENT) {
			rc = bks_error_set(&ctl->err, errno, "remove %s", path);
			goto out;
		}
	}
	rc = worker_path(path, sizeof(path), ctl, name, NULL);
	if (rc < 0)
		goto out;
	if (rmdir(path) < 0 && errno != ENOENT)
		rc = bks_error_set(&ctl->err, errno, "remove %s", path);
out:
	if (lock_fd >= 0)
		close(lock_fd);
	return rc;
}

/*
 * After worker pid exited: remove its leftovers (the lock, the
 * directory), unless a new worker of the same name has started since.
 */
static int cleanup_after(struct ctl *ctl, const char *name, int pid)
{
	int cur = read_pid(ctl, name), rc;

	if (cur > 0 && cur != pid && pid_is_worker(cur))
		return 0;
	rc = remove_worker_files(ctl, name);
	return rc == -EBUSY ? 0 : rc;
}

/* ---- the control socket -------------------------------------------------- */

/*
 * Connect to worker name.  Returns 0, or -errno with err saying why in
 * the words an operator needs (no socket: not running; refused: dead).
 */
static int client_open(struct client *cl, struct ctl *ctl, const char *name,
		       int timeout_ms)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char path[PATH_MAX];
	int rc;

	memset(cl, 0, sizeof(*cl));
	cl->fd = -1;
	cl->name = name;
	cl->timeout_ms = timeout_ms;
	rc = worker_path(path, sizeof(path), ctl, name, "ctl.sock");
	if (rc < 0)
		return rc;
	if (strlen(path) >= sizeof(sa.sun_path))
		return bks_error_setmsg(&ctl->err, ENAMETOOLONG,
					"socket path %s is too long (at most "
					"%zu bytes)",
					path, sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, strlen(path) + 1);
	cl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cl->fd < 0)
		return bks_error_set(&ctl->err, errno, "socket");
	if (connect(cl->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return 0;
	rc = -errno;
	close(cl->fd);
	cl->fd = -1;
	if (rc == -ENOENT)
		return bks_error_setmsg(&ctl->err, ENOENT,
					"not running (no %s)", path);
	if (rc == -ECONNREFUSED)
		return bks_error_setmsg(&ctl->err, ECONNREFUSED,
					"connection refused (stale socket; "
					"the worker is dead)");
	return bks_error_set(&ctl->err, -rc, "connect %s", path);
}

static void client_close(struct client *cl)
{
	if (cl->fd >= 0)
		close(cl->fd);
	cl->fd = -1;
	json_doc_free(&cl->doc);
	free(cl->buf);
	cl->buf = NULL;
	cl->len = cl->cap = cl->line_len = 0;
	cl->have_line = false;
}

/* Send cmd and a newline, whole. */
static int client_send(struct client *cl, const char *cmd,
		       struct bks_error *err)
{
	char line[256];
	size_t len, off = 0;
	int n = snprintf(line, sizeof(line), "%s\n", cmd);

	if (n < 0 || (size_t)n >= sizeof(line))
		return bks_error_setmsg(err, E2BIG, "command too long");
	len = (size_t)n;
	while (off < len) {
		ssize_t w = send(cl->fd, line + off, len - off, MSG_NOSIGNAL);

		if (w < 0) {
			if (errno == EINTR)
				continue;
			return bks_error_set(err, errno, "send '%s'", cmd);
		}
		off += (size_t)w;
	}
	return 0;
}

/* Read until buf holds a whole line; set line_len. */
static int client_read_line(struct client *cl, const char *cmd,
			    struct bks_error *err)
{
	uint64_t deadline = deadline_in(cl->timeout_ms);

	for (;;) {
		char *nl = cl->len ? memchr(cl->buf, '\n', cl->len) : NULL;
		struct pollfd p = {.fd = cl->fd, .events = POLLIN};
		ssize_t n;
		int pn;

		if (nl) {
			cl->line_len = (size_t)(nl - cl->buf);
			cl->have_line = true;
			return 0;
		}
		if (cl->len == cl->cap) {
			size_t cap = cl->cap ? cl->cap * 2 : 4096;
			char *b;

			if (cap > REPLY_MAX)
				return bks_error_setmsg(err, E2BIG,
							"%s: reply longer "
							"than %u bytes",
							cmd, REPLY_MAX);
			b = realloc(cl->buf, cap);
			if (!b)
				return bks_error_set(err, ENOMEM,
						     "%s: reply buffer", cmd);
			cl->buf = b;
			cl->cap = cap;
		}
		pn = poll(&p, 1, ms_left(deadline));
		if (pn < 0 && errno == EINTR)
			continue;
		if (pn < 0)
			return bks_error_set(err, errno, "%s: poll", cmd);
		if (pn == 0)
			return bks_error_setmsg(err, ETIMEDOUT,
						"%s: no reply within %d s", cmd,
						cl->timeout_ms / 1000);
		n = recv(cl->fd, cl->buf + cl->len, cl->cap - cl->len, 0);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return bks_error_set(err, errno, "%s: receive", cmd);
		if (n == 0)
			return bks_error_setmsg(err, ECONNRESET,
						"%s: the worker closed the "
						"connection without a reply",
						cmd);
		cl->len += (size_t)n;
	}
}

/*
 * Send cmd and read its reply into cl->doc (token 0, an object) and
 * cl->buf (cl->line_len bytes).  Returns 0 if the reply says "ok":true;
 * else -errno with err holding the worker's error (without the "NAME: "
 * it starts with: the caller names the worker).
 */
static int client_call(struct client *cl, const char *cmd,
		       struct bks_error *err)
{
	char msg[BKS_ERROR_MSG_MAX];
	size_t nlen = strlen(cl->name);
	int rc;

	/* Drop the previous reply. */
	if (cl->have_line) {
		size_t used = cl->line_len + 1;

		memmove(cl->buf, cl->buf + used, cl->len - used);
		cl->len -= used;
		cl->line_len = 0;
		cl->have_line = false;
	}
	json_doc_free(&cl->doc);
	rc = client_send(cl, cmd, err);
	/*
	 * A worker that refuses us (SO_PEERCRED) writes its reason and
	 * closes, maybe before our command went out: read the reason.
	 */
	if (rc == -EPIPE || rc == -ECONNRESET) {
		struct bks_error rerr = {0};

		if (client_read_line(cl, cmd, &rerr) < 0)
			return rc;
		rc = 0;
	} else if (rc < 0) {
		return rc;
	} else {
		rc = client_read_line(cl, cmd, err);
	}
	if (rc < 0)
		return rc;
	rc = json_parse(&cl->doc, cl->buf, cl->line_len);
	if (rc < 0 || cl->doc.toks[0].type != JSON_OBJECT)
		return bks_error_setmsg(
		    err, EPROTO, "%s: the reply is not a JSON object", cmd);
	if (json_is_true(&cl->doc, json_get(&cl->doc, 0, "ok")))
		return 0;
	if (json_get_str(&cl->doc, json_get(&cl->doc, 0, "error"), msg,
			 sizeof(msg)) == -EINVAL)
		snprintf(msg, sizeof(msg), "%s failed (no reason given)", cmd);
	bks_sanitize_line(msg);
	if (strncmp(msg, cl->name, nlen) == 0 &&
	    strncmp(msg + nlen, ": ", 2) == 0)
		return bks_error_setmsg(err, EIO, "%s", msg + nlen + 2);
	return bks_error_setmsg(err, EIO, "%s", msg);
}

/* The reply line as received, for --json. */
static void print_reply(const struct client *cl)
{
	fwrite(cl->buf, 1, cl->line_len, stdout);
	fputc('\n', stdout);
}

/* Field key of the reply as a number (0 if absent). */
static uint64_t reply_u64(const struct client *cl, int obj, const char *key)
{
	uint64_t v = 0;

	json_get_u64(&cl->doc, json_get(&cl->doc, obj, key), &v);
	return v;
}

/* Field key of the reply as a string ("?" if absent), sanitised. */
static const char *reply_str(const struct client *cl, int obj, const char *key,
			     char *buf, size_t size)
{
	int rc =
	    json_get_str(&cl->doc, json_get(&cl->doc, obj, key), buf, size);

	if (rc == -EINVAL)
		snprintf(buf, size, "?");
	bks_sanitize_line(buf);
	return buf;
}

/* ---- list ---------------------------------------------------------------- */

/* One worker directory, as list shows it. */
struct entry {
	char name[WORKER_NAME_MAX + 1];
	int pid;	   /* 0: unknown */
	const char *state; /* "running", ..., "dead", "unreachable" */
	char state_buf[32];
	char chain[BKS_CHAIN_STR_MAX + 1];
	uint64_t size;
	bool read_only, live;
	char why[BKS_ERROR_MSG_MAX]; /* not live: why */
};

static void list_one(struct ctl *ctl, const char *name, struct entry *e)
{
	struct client cl;
	struct bks_error err = {0};
	int rc;

	memset(e, 0, sizeof(*e));
	/* worker_name_valid(): at most WORKER_NAME_MAX bytes. */
	snprintf(e->name, sizeof(e->name), "%.*s", WORKER_NAME_MAX, name);
	rc = client_open(&cl, ctl, name, LIST_TIMEOUT_MS);
	if (rc == 0)
		rc = client_call(&cl, "info", &err);
	else
		err = ctl->err;
	if (rc == 0) {
		e->live = true;
		e->pid = (int)reply_u64(&cl, 0, "pid");
		e->size = reply_u64(&cl, 0, "size");
		e->read_only =
		    json_is_true(&cl.doc, json_get(&cl.doc, 0, "read_only"));
		reply_str(&cl, 0, "state", e->state_buf, sizeof(e->state_buf));
		e->state = e->state_buf;
		reply_str(&cl, 0, "chain", e->chain, sizeof(e->chain));
		client_close(&cl);
		return;
	}
	client_close(&cl);
	rc = read_pid(ctl, name);
	e->pid = rc > 0 ? rc : 0;
	if (!pid_is_worker(e->pid)) {
		e->state = "dead";
		if (e->pid)
			snprintf(e->why, sizeof(e->why), "stale pid %d",
				 e->pid);
		else
			snprintf(e->why, sizeof(e->why), "no pid file");
		return;
	}
	e->state = "unreachable";
	snprintf(e->why, sizeof(e->why), "%s", err.msg);
}

static int only_dirs(const struct dirent *d)
{
	/* DT_UNKNOWN: some file systems do not say; lstat decides later. */
	return (d->d_type == DT_DIR || d->d_type == DT_UNKNOWN) &&
	       worker_name_valid(d->d_name);
}

static int cmd_list(struct ctl *ctl)
{
	struct dirent **names = NULL;
	struct json_writer j;
	struct entry *e = NULL;
	int n, rc = EXIT_OK;

	json_writer_init(&j, REPLY_MAX);
	n = scandir(ctl->rundir, &names, only_dirs, alphasort);
	if (n < 0 && errno != ENOENT) {
		fail("scan %s: %m", ctl->rundir);
		return EXIT_FAIL;
	}
	e = malloc(sizeof(*e));
	if (!e) {
		fail("list: %m");
		rc = EXIT_FAIL;
		goto out;
	}
	json_arr_begin(&j);
	for (int i = 0; i < n; i++) {
		const char *name = names[i]->d_name;
		char path[PATH_MAX];
		struct stat st;

		if (worker_path(path, sizeof(path), ctl, name, NULL) < 0 ||
		    lstat(path, &st) < 0 || !S_ISDIR(st.st_mode))
			continue;
		list_one(ctl, name, e);
		if (ctl->json) {
			json_obj_begin(&j);
			json_kv_str(&j, "name", e->name);
			json_key(&j, "pid");
			if (e->pid)
				json_u64(&j, (uint64_t)e->pid);
			else
				json_null(&j);
			json_kv_str(&j, "state", e->state);
			if (e->live) {
				json_kv_str(&j, "chain", e->chain);
				json_kv_u64(&j, "size", e->size);
				json_kv_bool(&j, "read_only", e->read_only);
			} else {
				json_kv_str(&j, "error", e->why);
			}
			json_obj_end(&j);
		} else if (e->live) {
			printf("name=%s pid=%d state=%s chain=%s\n", e->name,
			       e->pid, e->state, e->chain);
		} else if (strcmp(e->state, "dead") == 0) {
			printf("name=%s state=dead (%s)\n", e->name, e->why);
		} else {
			printf("name=%s pid=%d state=unreachable\n", e->name,
			       e->pid);
		}
	}
	json_arr_end(&j);
	if (ctl->json) {
		if (json_error(&j) < 0) {
			fail("list: %s", strerror(-json_error(&j)));
			rc = EXIT_FAIL;
			goto out;
		}
		fwrite(j.buf, 1, json_len(&j), stdout);
		fputc('\n', stdout);
	}
out:
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(e);
	json_writer_free(&j);
	return rc;
}

/* ---- create -------------------------------------------------------------- */

/* The worker program: next to this one, never found through PATH. */
static int worker_exe(char *buf, size_t size, struct bks_error *err)
{
	char self[PATH_MAX];
	ssize_t n = readlink("/proc/self/exe", self, sizeof(self) - 1);
	char *slash;

	if (n < 0)
		return bks_error_set(err, errno, "readlink /proc/self/exe");
	self[n] = '\0';
	slash = strrchr(self, '/');
	if (!slash)
		return bks_error_setmsg(
		    err, EINVAL, "/proc/self/exe is not a path: %s", self);
	*slash = '\0';
	if ((size_t)snprintf(buf, size, "%s/" WORKER_EXE, self) >= size)
		return bks_error_setmsg(err, ENAMETOOLONG,
					"path %s/" WORKER_EXE " is too long",
					self);
	return 0;
}

/*
 * Start the worker in its own session, stdio on /dev/null, with the
 * write end of the readiness pipe as --ready-fd.  Returns the pid, or
 * -errno with err set.
 */
static int spawn_worker(struct ctl *ctl, const char *exe, int ready_fd)
{
	posix_spawn_file_actions_t fa;
	posix_spawnattr_t attr;
	sigset_t none;
	char fdstr[16];
	const char *argv[12];
	extern char **environ;
	int argc = 0, rc;
	pid_t pid;

	snprintf(fdstr, sizeof(fdstr), "%d", ready_fd);
	argv[argc++] = exe;
	argv[argc++] = "--name";
	argv[argc++] = ctl->name;
	argv[argc++] = "--chain";
	argv[argc++] = ctl->chain;
	argv[argc++] = "--rundir";
	argv[argc++] = ctl->rundir;
	argv[argc++] = "--ready-fd";
	argv[argc++] = fdstr;
	if (ctl->read_only)
		argv[argc++] = "--read-only";
	argv[argc] = NULL;

	posix_spawn_file_actions_init(&fa);
	posix_spawnattr_init(&attr);
	sigemptyset(&none);
	/*
	 * A session of its own: no controlling terminal, no SIGHUP or
	 * SIGINT from ours.  Signals as a fresh program expects them.
	 */
	posix_spawnattr_setflags(&attr,
				 POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK);
	posix_spawnattr_setsigmask(&attr, &none);
	posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
	posix_spawn_file_actions_addopen(&fa, 1, "/dev/null", O_WRONLY, 0);
	posix_spawn_file_actions_adddup2(&fa, 1, 2);
	/* dup2 onto itself clears O_CLOEXEC: only the worker's end stays. */
	posix_spawn_file_actions_adddup2(&fa, ready_fd, ready_fd);
	rc = posix_spawn(&pid, exe, &fa, &attr, (char *const *)argv, environ);
	posix_spawn_file_actions_destroy(&fa);
	posix_spawnattr_destroy(&attr);
	if (rc != 0)
		return bks_error_set(&ctl->err, rc, "start %s", exe);
	return pid;
}

/*
 * Read the worker's readiness line ("ok" or "error: MSG") into buf.
 * Returns its length (0 at EOF without a line), or -ETIMEDOUT / -errno.
 */
static int read_ready(int fd, char *buf, size_t size)
{
	uint64_t deadline = deadline_in(READY_TIMEOUT_MS);
	size_t len = 0;

	for (;;) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		char *nl = memchr(buf, '\n', len);
		ssize_t n;
		int pn;

		if (nl) {
			*nl = '\0';
			return (int)(nl - buf);
		}
		if (len == size - 1) {
			buf[len] = '\0';
			return (int)len; /* over-long: take what came */
		}
		pn = poll(&p, 1, ms_left(deadline));
		if (pn < 0 && errno == EINTR)
			continue;
		if (pn < 0)
			return -errno;
		if (pn == 0)
			return -ETIMEDOUT;
		n = read(fd, buf + len, size - 1 - len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0) {
			/* EOF: a line without "\n" still counts, if any. */
			buf[len] = '\0';
			return (int)len;
		}
		len += (size_t)n;
	}
}

/*
 * Reap our child pid, waiting at most timeout_ms; kill it if it does not
 * exit in time.  Fills status.
 */
static void reap(int pid, int timeout_ms, int *status)
{
	int pidfd = pidfd_open(pid, 0);

	if (pidfd >= 0) {
		if (wait_pidfd(pidfd, timeout_ms) == -ETIMEDOUT)
			kill(pid, SIGKILL);
		close(pidfd);
	}
	while (waitpid(pid, status, 0) < 0 && errno == EINTR)
		;
}

static int cmd_create(struct ctl *ctl)
{
	char exe[PATH_MAX], line[BKS_ERROR_MSG_MAX + 64], how[64];
	int fds[2] = {-1, -1}, pid = -1, status = 0, rc = EXIT_FAIL, n;

	if (strlen(ctl->chain) > BKS_CHAIN_STR_MAX) {
		fail("worker %s: the chain is longer than %d bytes", ctl->name,
		     BKS_CHAIN_STR_MAX);
		return EXIT_FAIL;
	}
	/* The worker's lock decides; this only words the common case. */
	n = read_pid(ctl, ctl->name);
	if (n > 0 && pid_is_worker(n)) {
		fail("worker %s: already running (pid %d)", ctl->name, n);
		return EXIT_FAIL;
	}
	if (worker_exe(exe, sizeof(exe), &ctl->err) < 0) {
		fail("worker %s: %s", ctl->name, ctl->err.msg);
		return EXIT_FAIL;
	}
	if (pipe2(fds, O_CLOEXEC) < 0) {
		fail("worker %s: pipe: %m", ctl->name);
		return EXIT_FAIL;
	}
	pid = spawn_worker(ctl, exe, fds[1]);
	close(fds[1]);
	fds[1] = -1;
	if (pid < 0) {
		fail("worker %s: %s", ctl->name, ctl->err.msg);
		goto out;
	}
	n = read_ready(fds[0], line, sizeof(line));
	if (n > 0 && strcmp(line, "ok") == 0) {
		char path[PATH_MAX];

		/* It serves; it is no longer ours to wait for. */
		pid = -1;
		if (worker_path(path, sizeof(path), ctl, ctl->name,
				"nbd.sock") < 0) {
			fail("worker %s: %s", ctl->name, ctl->err.msg);
			goto out;
		}
		printf("%s\n", path);
		rc = EXIT_OK;
		goto out;
	}
	if (n > 0 && strncmp(line, "error: ", 7) == 0) {
		bks_sanitize_line(line);
		fail("worker %s: %s", ctl->name, line + 7);
		/*
		 * It cleans up and exits: wait, so that it is gone when we
		 * return, then remove the lock and directory it leaves (not
		 * if another worker holds them: "already running").
		 */
		reap(pid, EXIT_TIMEOUT_MS, &status);
		if (cleanup_after(ctl, ctl->name, pid) < 0)
			fail("worker %s: %s", ctl->name, ctl->err.msg);
		pid = -1;
		goto out;
	}
	if (n == -ETIMEDOUT) {
		fail("worker %s: not ready within %d s; killed it", ctl->name,
		     READY_TIMEOUT_MS / 1000);
		kill(pid, SIGKILL);
	} else if (n < 0) {
		fail("worker %s: read its readiness: %s; killed it", ctl->name,
		     strerror(-n));
		kill(pid, SIGKILL);
	} else if (n > 0) {
		bks_sanitize_line(line);
		fail("worker %s: unexpected readiness line '%.64s'; killed it",
		     ctl->name, line);
		kill(pid, SIGKILL);
	}
	reap(pid, EXIT_TIMEOUT_MS, &status);
	if (n == 0) {
		describe_status(how, sizeof(how), status);
		fail("worker %s: %s before it was ready", ctl->name, how);
	}
	/* It died without cleaning up: its files are stale now. */
	if (cleanup_after(ctl, ctl->name, pid) < 0)
		fail("worker %s: %s", ctl->name, ctl->err.msg);
	pid = -1;
out:
	if (fds[0] >= 0)
		close(fds[0]);
	return rc;
}

/* ---- destroy ------------------------------------------------------------- */

static int cmd_destroy(struct ctl *ctl)
{
	struct client cl = {.fd = -1};
	char path[PATH_MAX];
	struct bks_error err = {0};
	struct stat st;
	int pid, pidfd = -1, rc = EXIT_FAIL, wrc;

	if (worker_path(path, sizeof(path), ctl, ctl->name, NULL) < 0) {
		fail("worker %s: %s", ctl->name, ctl->err.msg);
		return EXIT_FAIL;
	}
	if (lstat(path, &st) < 0 && errno == ENOENT) {
		/* hotplug remove may run twice: nothing to do is success. */
		fail("no worker %s", ctl->name);
		return EXIT_OK;
	}
	if (client_open(&cl, ctl, ctl->name, CALL_TIMEOUT_MS) < 0) {
		int cerr = ctl->err.code;

		if (cerr != ENOENT && cerr != ECONNREFUSED) {
			fail("worker %s: %s", ctl->name, ctl->err.msg);
			goto out;
		}
		pid = read_pid(ctl, ctl->name);
		/* The lock in remove_worker_files() has the last word. */
		if (pid > 0 && pid_is_worker(pid)) {
			fail("worker %s: unreachable (pid %d is running, but "
			     "%s); not touching it",
			     ctl->name, pid, ctl->err.msg);
			goto out;
		}
		if (remove_worker_files(ctl, ctl->name) < 0) {
			fail("worker %s: not reachable (%s), not removed: %s",
			     ctl->name,
			     cerr == ENOENT ? "no socket" : "refused",
			     ctl->err.msg);
			goto out;
		}
		if (pid > 0)
			fail("worker %s: stale (pid %d is dead); removed its "
			     "files",
			     ctl->name, pid);
		else
			fail("worker %s: stale (no pid file, %s); removed its "
			     "files",
			     ctl->name, ctl->err.msg);
		rc = EXIT_OK;
		goto out;
	}
	if (client_call(&cl, "info", &err) < 0) {
		fail("worker %s: %s", ctl->name, err.msg);
		goto out;
	}
	pid = (int)reply_u64(&cl, 0, "pid");
	/* Before shutdown: the pidfd pins this process, not a reused pid. */
	pidfd = pid > 0 ? pidfd_open(pid, 0) : -1;
	if (pidfd < 0 && errno != ENOSYS) {
		fail("worker %s: pidfd_open %d: %m", ctl->name, pid);
		goto out;
	}
	if (client_call(&cl, "shutdown", &err) < 0 && err.code != ECONNRESET) {
		/* ECONNRESET: it stopped before its reply was read; fine. */
		fail("worker %s: %s", ctl->name, err.msg);
		goto out;
	}
	/*
	 * Without pidfds (old kernels, valgrind), the end of the control
	 * connection says the worker is (all but) gone: it closes only
	 * when the worker frees its ctl, just before exiting.
	 */
	if (pidfd >= 0) {
		client_close(&cl);
		wrc = wait_pidfd(pidfd, EXIT_TIMEOUT_MS);
	} else {
		wrc = wait_eof(cl.fd, EXIT_TIMEOUT_MS);
	}
	if (wrc == -ETIMEDOUT) {
		fail("worker %s: pid %d did not exit within %d s", ctl->name,
		     pid, EXIT_TIMEOUT_MS / 1000);
		goto out;
	}
	if (wrc < 0) {
		fail("worker %s: wait for pid %d: %s", ctl->name, pid,
		     strerror(-wrc));
		goto out;
	}
	if (cleanup_after(ctl, ctl->name, pid) < 0) {
		fail("worker %s: %s", ctl->name, ctl->err.msg);
		goto out;
	}
	rc = EXIT_OK;
out:
	client_close(&cl);
	if (pidfd >= 0)
		close(pidfd);
	return rc;
}

/* ---- commands on a running worker ---------------------------------------- */

static void print_info(const struct client *cl)
{
	char s[BKS_CHAIN_STR_MAX + 1];
	int layers = json_get(&cl->doc, 0, "layers");

	printf("name:         %s\n", reply_str(cl, 0, "name", s, sizeof(s)));
	printf("state:        %s\n", reply_str(cl, 0, "state", s, sizeof(s)));
	printf("pid:          %" PRIu64 "\n", reply_u64(cl, 0, "pid"));
	printf("chain:        %s\n", reply_str(cl, 0, "chain", s, sizeof(s)));
	printf("size:         %" PRIu64 " bytes\n", reply_u64(cl, 0, "size"));
	printf("block size:   %" PRIu64 "\n", reply_u64(cl, 0, "block_size"));
	printf("read-only:    %s\n",
	       json_is_true(&cl->doc, json_get(&cl->doc, 0, "read_only"))
		   ? "yes"
		   : "no");
	printf("uptime:       %" PRIu64 " s\n", reply_u64(cl, 0, "uptime_s"));
	printf("connections:  %" PRIu64 "\n", reply_u64(cl, 0, "connections"));
	printf("nbd socket:   %s\n",
	       reply_str(cl, 0, "nbd_socket", s, sizeof(s)));
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
static void print_counters(const struct client *cl, int obj)
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

static void print_stats(const struct client *cl)
{
	const struct json_doc *d = &cl->doc;
	int w = json_get(d, 0, "worker"), nbd = json_get(d, 0, "nbd");
	int layers = json_get(d, 0, "layers");
	char s[64];

	printf("worker %s: %s, %" PRIu64 " pauses, %" PRIu64
	       " ms paused, up %" PRIu64 " s\n",
	       cl->name, reply_str(cl, w, "state", s, sizeof(s)),
	       reply_u64(cl, w, "pauses"), reply_u64(cl, w, "paused_ms"),
	       reply_u64(cl, w, "uptime_s"));
	printf("nbd:");
	print_counters(cl, nbd);
	printf("\n");
	if (layers < 0 || d->toks[layers].type != JSON_ARRAY)
		return;
	for (unsigned int i = 0, l = (unsigned int)layers + 1;
	     i < d->toks[layers].count; i++, l = d->toks[l].next) {
		int ops = json_get(d, (int)l, "ops");
		char driver[BKS_DRIVER_NAME_MAX + 1];

		reply_str(cl, (int)l, "driver", driver, sizeof(driver));
		printf("layer %" PRIu64 " %s: %" PRIu64 " in flight\n",
		       reply_u64(cl, (int)l, "index"), driver,
		       reply_u64(cl, (int)l, "in_flight"));
		if (ops >= 0 && d->toks[ops].type == JSON_OBJECT) {
			unsigned int k = (unsigned int)ops + 1;

			for (unsigned int o = 0; o < d->toks[ops].count; o++) {
				int v = (int)k + 1;

				json_get_str(d, (int)k, s, sizeof(s));
				bks_sanitize_line(s);
				printf("  %-13s %12" PRIu64 " ops %16" PRIu64
				       " bytes %8" PRIu64 " errors\n",
				       s, reply_u64(cl, v, "ops"),
				       reply_u64(cl, v, "bytes"),
				       reply_u64(cl, v, "errors"));
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
static int dirty_all(struct ctl *ctl, struct client *cl)
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

		if (client_call(cl, cmd, &err) < 0) {
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
			block = reply_u64(cl, 0, "block_size");
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
	struct client cl;
	struct bks_error err = {0};
	int rc = EXIT_FAIL;

	if (client_open(&cl, ctl, ctl->name, CALL_TIMEOUT_MS) < 0) {
		fail("worker %s: %s", ctl->name, ctl->err.msg);
		goto out;
	}
	if (strcmp(cmd, "dirty") == 0 && !ctl->clear) {
		rc = dirty_all(ctl, &cl);
		goto out;
	}
	if (strcmp(cmd, "dirty") == 0)
		cmd = "clear-dirty";
	if (client_call(&cl, cmd, &err) < 0) {
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
	client_close(&cl);
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
};

static const struct option long_opts[] = {
    {"rundir", required_argument, NULL, 'r'},
    {"name", required_argument, NULL, 'n'},
    {"chain", required_argument, NULL, 'c'},
    {"read-only", no_argument, NULL, 'R'},
    {"json", no_argument, NULL, 'j'},
    {"clear", no_argument, NULL, 'C'},
    {"help", no_argument, NULL, 'h'},
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
		fail("%s: needs %s", cmd->name,
		     (cmd->required & ~given & OPT_NAME) ? "--name NAME"
							 : "--chain CHAIN");
		return EXIT_USAGE;
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
	return cmd_worker(&ctl, cmd->name);
}
