/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Loop devices for the loop and fuse mechanisms (hp-dev.c puts one on
 * blkstack-fuse's file, or on the worker's own FUSE file): internal to the
 * dev-*.c files.
 */
#ifndef BLKSTACK_DEV_LOOP_H
#define BLKSTACK_DEV_LOOP_H

#include <stdbool.h>

#include "blkstack/error.h"
#include "hp-dev.h"

/*
 * Is the loop device at path backed by file?  1 yes, 0 no (free, or
 * somebody else's), -errno (err set) if we cannot tell.
 */
int hp_loop_backed_by(const char *path, const char *file,
		      struct bks_error *err);

/*
 * A free loop device on file, direct I/O, read-only if ro: fills
 * dev->path, major and minor.  On failure no device is left behind and
 * dev->path is "".
 */
int hp_loop_attach(const char *file, bool ro, struct hp_dev *dev,
		   struct bks_error *err);

/*
 * What a bounded flush does when the flush has not finished after ms
 * milliseconds: stuck(fd, arg) with the loop device open as fd, which
 * must make the flush end (fail it); the flush is then given as long
 * again, and abandoned after that (its process killed).
 */
struct hp_loop_bound {
	int ms;
	void (*stuck)(int fd, void *arg);
	void *arg;
};

/*
 * Flush and free the loop device dev->path, if it is still the record's
 * and backed by file (else success, untouched).  *flush_rc gets the
 * flush's result (0 or -errno, err untouched: the caller decides whether
 * it matters).  With bound (not NULL) the flush runs in a child process
 * and is bounded as struct hp_loop_bound says; without, it runs here and
 * takes what it takes (blkstack-fuse bounds its own requests).
 */
int hp_loop_detach(const struct hp_dev *dev, const char *file,
		   const struct hp_loop_bound *bound, int *flush_rc,
		   struct bks_error *err);

#endif /* BLKSTACK_DEV_LOOP_H */
