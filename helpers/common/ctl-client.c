/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The control client: a connection, commands, replies (ctl-client.h). */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include "ctl-client.h"
#include "deadline.h"
#include "rundir.h"

/* Errno values to search for a name: Linux's are all below this. */
#define ERRNO_LIMIT 4096

int ctl_errno_from_name(const char *name)
{
	for (int e = 1; e < ERRNO_LIMIT; e++) {
		const char *n = strerrorname_np(e);

		if (n && strcmp(n, name) == 0)
			return e;
	}
	return 0;
}

int ctl_client_open(struct ctl_client *cl, const char *rundir, const char *name,
		    int timeout_ms, struct bks_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	char path[PATH_MAX];
	int n, rc;

	memset(cl, 0, sizeof(*cl));
	cl->fd = -1;
	snprintf(cl->name, sizeof(cl->name), "%.*s", WORKER_NAME_MAX, name);
	cl->timeout_ms = timeout_ms;
	n = snprintf(path, sizeof(path), "%s/%s/" WORKER_FILE_CTL, rundir,
		     name);
	if (n < 0 || (size_t)n >= sizeof(path))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"path %s/%s is too long", rundir, name);
	if ((size_t)n >= sizeof(sa.sun_path))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"socket path %s is too long (at most "
					"%zu bytes)",
					path, sizeof(sa.sun_path) - 1);
	memcpy(sa.sun_path, path, (size_t)n + 1);
	cl->fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (cl->fd < 0)
		return bks_error_set(err, errno, "socket");
	if (connect(cl->fd, (struct sockaddr *)&sa, sizeof(sa)) == 0)
		return 0;
	rc = -errno;
	close(cl->fd);
	cl->fd = -1;
	if (rc == -ENOENT)
		return bks_error_setmsg(err, ENOENT, "not running (no %s)",
					path);
	if (rc == -ECONNREFUSED)
		return bks_error_setmsg(err, ECONNREFUSED,
					"connection refused (stale socket; "
					"the worker is dead)");
	return bks_error_set(err, -rc, "connect %s", path);
}

void ctl_client_close(struct ctl_client *cl)
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
static int client_send(struct ctl_client *cl, const char *cmd,
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
static int client_read_line(struct ctl_client *cl, const char *cmd,
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

			if (cap > CTL_REPLY_MAX)
				return bks_error_setmsg(err, E2BIG,
							"%s: reply longer "
							"than %u bytes",
							cmd, CTL_REPLY_MAX);
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

/* The errno a failure reply carries: by name, else number, else EIO. */
static int reply_errno(const struct ctl_client *cl)
{
	char name[32];
	uint64_t num = 0;
	int e = 0;

	if (json_get_str(&cl->doc, json_get(&cl->doc, 0, "errno"), name,
			 sizeof(name)) == 0)
		e = ctl_errno_from_name(name);
	if (e == 0 &&
	    json_get_u64(&cl->doc, json_get(&cl->doc, 0, "errnum"), &num) ==
		0 &&
	    num > 0 && num < ERRNO_LIMIT)
		e = (int)num;
	return e ? e : EIO;
}

int ctl_client_call(struct ctl_client *cl, const char *cmd,
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
		return bks_error_setmsg(err, reply_errno(cl), "%s",
					msg + nlen + 2);
	return bks_error_setmsg(err, reply_errno(cl), "%s", msg);
}

const char *ctl_reply_line(const struct ctl_client *cl, size_t *len)
{
	*len = cl->line_len;
	return cl->buf;
}

uint64_t ctl_reply_u64(const struct ctl_client *cl, int obj, const char *key)
{
	uint64_t v = 0;

	json_get_u64(&cl->doc, json_get(&cl->doc, obj, key), &v);
	return v;
}

const char *ctl_reply_str(const struct ctl_client *cl, int obj, const char *key,
			  char *buf, size_t size)
{
	int rc =
	    json_get_str(&cl->doc, json_get(&cl->doc, obj, key), buf, size);

	if (rc == -EINVAL)
		snprintf(buf, size, "?");
	bks_sanitize_line(buf);
	return buf;
}

int ctl_command(const char *rundir, const char *name, const char *cmd,
		int timeout_ms, struct bks_error *err)
{
	struct ctl_client cl;
	int rc;

	rc = ctl_client_open(&cl, rundir, name, timeout_ms, err);
	if (rc == 0)
		rc = ctl_client_call(&cl, cmd, err);
	ctl_client_close(&cl);
	if (rc < 0)
		bks_error_prepend(err, "worker %s: ", name);
	return rc;
}
