/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A started program's first duties to its starter: the --ready-fd
 * readiness line (docs/control-protocol.txt, "Readiness"), closing the
 * descriptors it inherited, and its stop signals.  blkstack-worker,
 * blkstack-supervisor and blkstack-fuse call these at start-up.
 */
#ifndef BLKSTACK_READY_FD_H
#define BLKSTACK_READY_FD_H

#include <stddef.h>

#include "blkstack/error.h"
#include "blkstack/loop.h"

/*
 * Parse a descriptor number given on the command line (--ready-fd,
 * --supervisor-fd): decimal, min to 65535.  Returns 0 with *fd set, or
 * -EINVAL (the caller prints the usage error).
 */
int ready_fd_parse(const char *arg, int min, int *fd);

/*
 * Close every descriptor from 3 up but keep1 and keep2 (either may be
 * negative: none).  For a long-lived program right after its options.
 */
void close_inherited(int keep1, int keep2);

/*
 * Write len bytes of text to fd and close it; nothing if fd < 0.  A
 * starter that went away is no error.  ready_report() is the usual
 * caller; blkstack-supervisor forwards its worker's line with it.
 */
void ready_forward(int fd, const char *text, size_t len);

/*
 * Tell the starter how start-up went and close fd (nothing if fd < 0):
 * "ok\n" when err is NULL, else "error: MSG\nerrno: ENAME\n" (the errno on
 * a line of its own: a starter that reads one line still gets the
 * message).
 */
void ready_report(int fd, const struct bks_error *err);

/*
 * The stop signals, 0-terminated sigs (e.g. SIGTERM, SIGINT), blocked and
 * read from a signalfd (*fdp, non-blocking, close-on-exec) watched by w on
 * loop, which calls fn(w, events) with opaque; SIGPIPE is ignored.  The
 * caller removes the watch and closes *fdp.  Returns 0 or -errno with err
 * set (*fdp -1 unless the signalfd was made).
 */
int stop_signals_watch(struct bks_loop *loop, struct bks_watch *w, int *fdp,
		       const int *sigs, bks_watch_fn *fn, void *opaque,
		       struct bks_error *err);

#endif /* BLKSTACK_READY_FD_H */
