/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* A program's directory, name lock and pid file (rundir-files.h). */
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lockfile.h"
#include "rundir-files.h"

/* Attempts at a lock lost to a clean-up removing DIR/NAME. */
#define LOCK_RETRIES 8

int rundir_ensure_dir(const char *path, mode_t mode, struct bks_error *err)
{
	struct stat st;

	if (mkdir(path, mode) < 0 && errno != EEXIST)
		return bks_error_set(err, errno, "mkdir %s", path);
	if (lstat(path, &st) < 0)
		return bks_error_set(err, errno, "stat %s", path);
	if (!S_ISDIR(st.st_mode))
		return bks_error_setmsg(err, ENOTDIR, "%s is not a directory",
					path);
	return 0;
}

/* dir/file into buf, or -ENAMETOOLONG. */
static int join(const char *dir, const char *file, char *buf, size_t size,
		struct bks_error *err)
{
	int n = snprintf(buf, size, "%s/%s", dir, file);

	if (n < 0 || (size_t)n >= size)
		return bks_error_setmsg(err, ENAMETOOLONG, "%s/%s: too long",
					dir, file);
	return 0;
}

/* The first line of path into buf, "?" if there is none. */
static void read_holder(const char *path, char *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
	ssize_t n = -1;

	if (fd >= 0) {
		n = read(fd, buf, size - 1);
		close(fd);
	}
	buf[n > 0 ? n : 0] = '\0';
	buf[strcspn(buf, "\n")] = '\0';
	if (!buf[0])
		snprintf(buf, size, "?");
}

int rundir_take_lock(const char *dir, const char *lock_file,
		     const char *pid_file, int *fdp, char *holder, size_t size,
		     struct bks_error *err)
{
	char path[PATH_MAX + 32];
	int rc;

	rc = join(dir, lock_file, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	/* lockfile.h rechecks the inode; DIR/NAME itself may go too. */
	for (int i = 0; i < LOCK_RETRIES; i++) {
		rc = rundir_ensure_dir(dir, 0700, err);
		if (rc < 0)
			return rc;
		rc = lockfile_take(path, LOCKFILE_CREATE | LOCKFILE_NONBLOCK,
				   fdp, err);
		if (rc != -ENOENT)
			break; /* -ENOENT: DIR/NAME went just now */
	}
	if (rc == -ENOENT)
		return bks_error_setmsg(err, EAGAIN,
					"lock %s: removed under us %d times",
					path, LOCK_RETRIES);
	if (rc == -EWOULDBLOCK && holder && size > 1) {
		if (join(dir, pid_file, path, sizeof(path), NULL) == 0)
			read_holder(path, holder, size);
		else
			snprintf(holder, size, "?");
	}
	return rc;
}

int rundir_write_file(const char *dir, const char *file, const void *buf,
		      size_t len, struct bks_error *err)
{
	char path[PATH_MAX + 32], tmp[PATH_MAX + 40];
	int fd, n, rc;

	rc = join(dir, file, path, sizeof(path), err);
	if (rc < 0)
		return rc;
	n = snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (n < 0 || (size_t)n >= sizeof(tmp))
		return bks_error_setmsg(err, ENAMETOOLONG, "%s.tmp: too long",
					path);
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW,
		  0644);
	if (fd < 0)
		return bks_error_set(err, errno, "open %s", tmp);
	errno = 0;
	if (write(fd, buf, len) != (ssize_t)len)
		rc = bks_error_set(err, errno ? errno : EIO, "write %s", tmp);
	close(fd);
	if (rc == 0 && rename(tmp, path) < 0)
		rc = bks_error_set(err, errno, "rename %s", path);
	if (rc < 0)
		unlink(tmp);
	return rc;
}

int rundir_write_pid(const char *dir, const char *file, struct bks_error *err)
{
	char line[32];
	int n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());

	return rundir_write_file(dir, file, line, (size_t)n, err);
}
