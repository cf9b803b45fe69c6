/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The workers of a run directory (worker-list.h). */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "ctl-client.h"
#include "rundir.h"
#include "small-file.h"
#include "worker-list.h"
#include "worker-live.h"

/* The value of "key=" in the lines of text into buf ("" if none). */
static void state_value(const char *text, const char *key, char *buf,
			size_t size)
{
	size_t klen = strlen(key);

	buf[0] = '\0';
	for (const char *l = text; *l;
	     l += strcspn(l, "\n") + (l[strcspn(l, "\n")] != '\0')) {
		size_t len = strcspn(l, "\n");

		if (len > klen && strncmp(l, key, klen) == 0 &&
		    l[klen] == '=') {
			snprintf(buf, size, "%.*s", (int)(len - klen - 1),
				 l + klen + 1);
			bks_sanitize_line(buf);
			return;
		}
	}
}

/* What supervisor.state of wdir says, if there is one. */
static void supervisor_status(const char *wdir, struct worker_status *st)
{
	char path[PATH_MAX + 32], text[4096], num[32], *end;
	struct worker_proc p;
	struct bks_error ignore;

	if (snprintf(path, sizeof(path), "%s/" SUPERVISOR_FILE_STATE, wdir) >=
		(int)sizeof(path) ||
	    small_file_read(path, text, sizeof(text)) < 0)
		return;
	st->supervised = true;
	state_value(text, "state", st->sup_state, sizeof(st->sup_state));
	state_value(text, "pid", num, sizeof(num));
	st->sup_pid = (pid_t)strtol(num, &end, 10);
	state_value(text, "restarts", num, sizeof(num));
	st->restarts = (unsigned int)strtoul(num, &end, 10);
	state_value(text, "last_exit", st->last_exit, sizeof(st->last_exit));
	state_value(text, "hung", st->hung, sizeof(st->hung));
	state_value(text, "gave_up", st->gave_up, sizeof(st->gave_up));
	st->sup_live = supervisor_live(wdir, &p, &ignore) == 0;
	/* A supervisor that died (killed) says nothing true any more. */
	if (!st->sup_live && strcmp(st->sup_state, "gave-up") != 0)
		snprintf(st->sup_state, sizeof(st->sup_state), "dead");
}

void worker_status(const char *rundir, const char *name, int timeout_ms,
		   struct worker_status *st)
{
	struct ctl_client cl = {.fd = -1};
	struct bks_error err = {0};
	struct worker_proc p;
	char wdir[PATH_MAX];
	int rc;

	memset(st, 0, sizeof(*st));
	snprintf(st->name, sizeof(st->name), "%.*s", WORKER_NAME_MAX, name);
	if (snprintf(wdir, sizeof(wdir), "%s/%s", rundir, name) >=
	    (int)sizeof(wdir)) {
		snprintf(st->state, sizeof(st->state), "dead");
		snprintf(st->why, sizeof(st->why), "path too long");
		return;
	}
	supervisor_status(wdir, st);
	rc = worker_live(wdir, &p, &err);
	if (rc < 0) {
		snprintf(st->state, sizeof(st->state), "dead");
		st->pid = p.file_pid;
		if (p.file_pid)
			snprintf(st->why, sizeof(st->why), "stale pid %d",
				 (int)p.file_pid);
		else if (rc == -ESRCH)
			snprintf(st->why, sizeof(st->why), "%s", p.why);
		else
			snprintf(st->why, sizeof(st->why), "%s", err.msg);
		return;
	}
	st->pid = p.pid;
	rc = ctl_client_open(&cl, rundir, name, timeout_ms, &err);
	if (rc == 0)
		rc = ctl_client_call(&cl, "info", &err);
	if (rc < 0) {
		snprintf(st->state, sizeof(st->state), "unreachable");
		snprintf(st->why, sizeof(st->why), "%s", err.msg);
		ctl_client_close(&cl);
		return;
	}
	st->live = true;
	st->size = ctl_reply_u64(&cl, 0, "size");
	st->read_only =
	    json_is_true(&cl.doc, json_get(&cl.doc, 0, "read_only"));
	ctl_reply_str(&cl, 0, "state", st->state, sizeof(st->state));
	ctl_reply_str(&cl, 0, "chain", st->chain, sizeof(st->chain));
	ctl_client_close(&cl);
}

static int only_names(const struct dirent *d)
{
	/* DT_UNKNOWN: some file systems do not say; lstat decides later. */
	return (d->d_type == DT_DIR || d->d_type == DT_UNKNOWN) &&
	       worker_name_valid(d->d_name);
}

int worker_list(const char *rundir, int timeout_ms,
		int (*fn)(const struct worker_status *st, void *arg), void *arg,
		struct bks_error *err)
{
	struct dirent **names = NULL;
	struct worker_status *st = NULL;
	int n, rc = 0;

	n = scandir(rundir, &names, only_names, alphasort);
	if (n < 0 && errno == ENOENT)
		return 0;
	if (n < 0)
		return bks_error_set(err, errno, "scan %s", rundir);
	st = malloc(sizeof(*st));
	if (!st) {
		rc = bks_error_set(err, ENOMEM, "list %s", rundir);
		goto out;
	}
	for (int i = 0; i < n && rc == 0; i++) {
		char path[PATH_MAX];
		struct stat sb;

		if (snprintf(path, sizeof(path), "%s/%s", rundir,
			     names[i]->d_name) >= (int)sizeof(path) ||
		    lstat(path, &sb) < 0 || !S_ISDIR(sb.st_mode))
			continue;
		worker_status(rundir, names[i]->d_name, timeout_ms, st);
		rc = fn(st, arg);
	}
out:
	for (int i = 0; i < n; i++)
		free(names[i]);
	free(names);
	free(st);
	return rc;
}
