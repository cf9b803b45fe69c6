/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A long-lived program's own files in its run directory DIR/NAME: the
 * directory, the name lock and the pid file.  blkstack-worker and
 * blkstack-supervisor call these at start-up (rundir.h names the files).
 */
#ifndef BLKSTACK_RUNDIR_FILES_H
#define BLKSTACK_RUNDIR_FILES_H

#include <stddef.h>
#include <sys/types.h>

#include "blkstack/error.h"

/*
 * mkdir path with mode, accepting an existing directory but not a symlink
 * or another file (-ENOTDIR).  Required by every starter before it takes
 * its lock.  Returns 0 or -errno with err set.
 */
int rundir_ensure_dir(const char *path, mode_t mode, struct bks_error *err);

/*
 * Take dir/lock_file (lockfile.h, created 0600, never waiting): the one
 * instance per name.  dir is created (0700) before each attempt, as a
 * clean-up holding the lock removes the file and dir; after 8 attempts
 * lost that way it gives up with -EAGAIN.  *fdp gets the locked
 * descriptor (the lock lasts until it is closed).  When another process
 * holds it, returns -EWOULDBLOCK with holder (size bytes) set to the
 * first line of dir/pid_file, or "?" if unreadable, for the caller's
 * "already running" message.  Returns 0 or -errno with err set.
 */
int rundir_take_lock(const char *dir, const char *lock_file,
		     const char *pid_file, int *fdp, char *holder, size_t size,
		     struct bks_error *err);

/*
 * Write len bytes of buf as dir/file (mode 0644), whole or not at all: a
 * temporary file dir/file.tmp renamed into place, removed on failure.
 * For the pid files and supervisor.state.  Returns 0 or -errno with err
 * set.
 */
int rundir_write_file(const char *dir, const char *file, const void *buf,
		      size_t len, struct bks_error *err);

/*
 * Write dir/file as "PID\n" of this process (rundir_write_file).  Called
 * last in start-up, once the program serves.  Returns 0 or -errno with
 * err set.
 */
int rundir_write_pid(const char *dir, const char *file, struct bks_error *err);

#endif /* BLKSTACK_RUNDIR_FILES_H */
