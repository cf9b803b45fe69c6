/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's state kept across a restart: see worker-state.h.
 */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "rundir.h"
#include "small-file.h"
#include "worker-state.h"

/* The chain file and its temporary (rundir.h names the others). */
#define WORKER_FILE_CHAIN     "chain"
#define WORKER_FILE_CHAIN_TMP "chain.tmp"

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

int worker_state_chain_save(const struct worker *w, const char *chain,
			    struct bks_error *err)
{
	char path[PATH_MAX + 16], tmp[PATH_MAX + 16];
	size_t len = strlen(chain), off = 0;
	int fd = -1, rc;

	rc = state_path(w, WORKER_FILE_CHAIN, path, sizeof(path), err);
	if (rc == 0)
		rc =
		    state_path(w, WORKER_FILE_CHAIN_TMP, tmp, sizeof(tmp), err);
	if (rc < 0)
		return rc;
	if (len == 0 || len > BKS_CHAIN_STR_MAX || memchr(chain, '\n', len))
		return bks_error_setmsg(err, EINVAL,
					"record the chain: not a chain string");
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW | O_CLOEXEC,
		  0600);
	if (fd < 0)
		return bks_error_set(err, errno, "record the chain in %s", tmp);
	while (off <= len) {
		/* The string, then its newline: two writes at most. */
		const char *p = off < len ? chain + off : "\n";
		size_t n = off < len ? len - off : 1;
		ssize_t got = write(fd, p, n);

		if (got < 0 && errno == EINTR)
			continue;
		if (got <= 0) {
			rc = bks_error_set(err, got < 0 ? errno : EIO,
					   "record the chain in %s", tmp);
			goto out;
		}
		off += (size_t)got;
	}
	if (fsync(fd) < 0) {
		rc = bks_error_set(err, errno, "record the chain: fsync %s",
				   tmp);
		goto out;
	}
	if (rename(tmp, path) < 0)
		rc = bks_error_set(err, errno, "record the chain: rename %s",
				   tmp);
out:
	close(fd);
	if (rc < 0)
		unlink(tmp);
	return rc;
}

int worker_state_chain_load(const struct worker *w, char *buf, size_t size,
			    struct bks_error *err)
{
	char path[PATH_MAX + 16];
	int rc, n;

	rc = state_path(w, WORKER_FILE_CHAIN, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	n = small_file_read(path, buf, size);
	if (n == -ENOENT)
		return 0;
	if (n < 0)
		return bks_error_set(err, -n, "read the chain file %s", path);
	if (n < 2 || buf[n - 1] != '\n' || memchr(buf, '\n', (size_t)n - 1) ||
	    memchr(buf, '\0', (size_t)n))
		return bks_error_setmsg(err, EINVAL,
					"the chain file %s is not one line "
					"of a chain string",
					path);
	buf[n - 1] = '\0';
	return 1;
}

int worker_state_remove(const struct worker *w, struct bks_error *err)
{
	static const char *const chain_files[] = {WORKER_FILE_CHAIN,
						  WORKER_FILE_CHAIN_TMP};
	char path[PATH_MAX + 16];
	int rc = 0;

	for (size_t i = 0; i < sizeof(chain_files) / sizeof(chain_files[0]);
	     i++) {
		if (state_path(w, chain_files[i], path, sizeof(path), err) < 0)
			return -ENAMETOOLONG;
		if (unlink(path) < 0 && errno != ENOENT && rc == 0)
			rc = bks_error_set(err, errno, "remove %s", path);
	}

	for (size_t i = 0; i < sizeof(state_files) / sizeof(state_files[0]);
	     i++) {
		if (state_path(w, state_files[i], path, sizeof(path), err) < 0)
			return -ENAMETOOLONG;
		if (unlink(path) < 0 && errno != ENOENT && rc == 0)
			rc = bks_error_set(err, errno, "remove %s", path);
	}
	return rc;
}

void worker_logf(const struct worker *w, int prio, const char *fmt, ...)
{
	va_list ap;

	if (!w->vlog)
		return;
	va_start(ap, fmt);
	w->vlog(w, prio, fmt, ap);
	va_end(ap);
}

int worker_chain_refresh(struct worker *w)
{
	char buf[BKS_CHAIN_STR_MAX + 1];
	int n = bks_chain_string(w->chain, NULL, buf, sizeof(buf));

	if (n < 0)
		return n;
	memcpy(w->chain_buf, buf, (size_t)n + 1);
	w->chain_str = w->chain_buf;
	return 0;
}
