/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's state kept across a restart: see worker-state.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rundir.h"
#include "worker-state.h"

static const char *const state_files[] = {WORKER_FILES_STATE};

_Static_assert(sizeof(state_files) / sizeof(state_files[0]) ==
		   WORKER_LAYER_STATES + 1,
	       "WORKER_FILES_STATE: paused and one per layer position");
_Static_assert(WORKER_LAYER_STATES == BKS_CHAIN_MAX_LAYERS,
	       "one layer state file per layer position");

/* w->dir/file into buf.  Returns 0 or -ENAMETOOLONG with err. */
static int state_path(const struct worker *w, const char *file, char *buf,
		      size_t size, struct bks_error *err)
{
	int n = snprintf(buf, size, "%s/%s", w->dir, file);

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG, "%s/%s: too long",
					w->dir, file);
	return 0;
}

int worker_state_pause_save(const struct worker *w, struct bks_error *err)
{
	char path[PATH_MAX + 16];
	int fd, rc;

	rc = state_path(w, WORKER_FILE_PAUSED, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	/* Empty: its existence is the record, so creating it is atomic. */
	fd = open(path, O_WRONLY | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
	if (fd < 0)
		return bks_error_set(err, errno, "record the pause in %s",
				     path);
	close(fd);
	return 0;
}

int worker_state_pause_clear(const struct worker *w, struct bks_error *err)
{
	char path[PATH_MAX + 16];
	int rc;

	rc = state_path(w, WORKER_FILE_PAUSED, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	if (unlink(path) < 0 && errno != ENOENT)
		return bks_error_set(err, errno, "forget the pause: remove %s",
				     path);
	return 0;
}

bool worker_state_pause_saved(const struct worker *w, struct bks_error *err)
{
	char path[PATH_MAX + 16];
	struct stat st;

	if (state_path(w, WORKER_FILE_PAUSED, path, sizeof(path), err) < 0)
		return true;
	if (lstat(path, &st) == 0)
		return true;
	if (errno == ENOENT)
		return false;
	bks_error_set(err, errno, "stat %s", path);
	return true;
}

int worker_state_remove(const struct worker *w, struct bks_error *err)
{
	char path[PATH_MAX + 16];
	int rc = 0;

	for (size_t i = 0; i < sizeof(state_files) / sizeof(state_files[0]);
	     i++) {
		if (state_path(w, state_files[i], path, sizeof(path), err) < 0)
			return -ENAMETOOLONG;
		if (unlink(path) < 0 && errno != ENOENT && rc == 0)
			rc = bks_error_set(err, errno, "remove %s", path);
	}
	return rc;
}
