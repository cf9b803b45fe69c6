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
#include "worker-list.h"
#include "worker-live.h"

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
