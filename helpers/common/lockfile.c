/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Lock files: lock, then recheck the inode (lockfile.h). */
#include <errno.h>
#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include "lockfile.h"

/* Times a lock file may be removed under us before we give up. */
#define LOCKFILE_RETRIES 100

int lockfile_take(const char *path, unsigned int flags, int *fdp,
		  struct bks_error *err)
{
	int oflags = O_CLOEXEC | O_NOFOLLOW;
	struct stat fst, pst;

	*fdp = -1;
	oflags |= (flags & LOCKFILE_CREATE) ? O_RDWR | O_CREAT : O_RDONLY;
	for (int i = 0; i < LOCKFILE_RETRIES; i++) {
		int fd = open(path, oflags, 0600);

		if (fd < 0 && errno == ENOENT && !(flags & LOCKFILE_CREATE))
			return bks_error_set(err, ENOENT, "open %s", path);
		if (fd < 0)
			return bks_error_set(err, errno, "open %s", path);
		if (flock(fd, LOCK_EX |
				  ((flags & LOCKFILE_NONBLOCK) ? LOCK_NB : 0)) <
		    0) {
			int e = errno;

			close(fd);
			if (e == EWOULDBLOCK)
				return bks_error_setmsg(
				    err, EWOULDBLOCK,
				    "%s is locked by another process", path);
			return bks_error_set(err, e, "lock %s", path);
		}
		if (fstat(fd, &fst) == 0 && lstat(path, &pst) == 0 &&
		    fst.st_dev == pst.st_dev && fst.st_ino == pst.st_ino) {
			*fdp = fd;
			return 0;
		}
		/* Removed (or replaced) while we waited: start again. */
		close(fd);
	}
	return bks_error_setmsg(err, EAGAIN,
				"lock %s: removed under us %d times", path,
				LOCKFILE_RETRIES);
}
