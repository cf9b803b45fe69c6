/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Lock files: flock() a file, then check that its path still names the
 * file locked.  Whoever removes a lock file does so while holding it; a
 * process that waited for the lock of a file removed meanwhile would hold
 * a lock on nothing, so it starts again with whatever the path names now.
 */
#ifndef BLKSTACK_LOCKFILE_H
#define BLKSTACK_LOCKFILE_H

#include "blkstack/error.h"

enum {
	LOCKFILE_CREATE = 1u << 0,  /* create the file (0600) if absent */
	LOCKFILE_NONBLOCK = 1u << 1 /* fail at once if another holds it */
};

/*
 * Take an exclusive flock() on path, opened O_RDWR (O_RDONLY without
 * LOCKFILE_CREATE), O_NOFOLLOW, O_CLOEXEC.  *fdp gets the descriptor; the
 * lock lasts until it is closed.  Returns 0; -EWOULDBLOCK if another
 * process holds it (LOCKFILE_NONBLOCK); -ENOENT if there is no file
 * (without LOCKFILE_CREATE); -EAGAIN if the file was removed under us
 * too many times; or another -errno.  err is set on every failure.
 */
int lockfile_take(const char *path, unsigned int flags, int *fdp,
		  struct bks_error *err);

#endif /* BLKSTACK_LOCKFILE_H */
