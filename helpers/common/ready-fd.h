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
 * Close every descriptor from 3 up but the n in keep (negative ones are
 * none).  For a long-lived program right after its options.
 */
void close_inherited(const int *keep, size_t n);

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

/* A program's stop signals, read from a signalfd on its loop. */
struct stop_signals {
	struct bks_watch watch;
	int fd; /* -1 (STOP_SIGNALS_INIT) until stop_signals_start() */
	void (*fn)(void *opaque, unsigned int signo);
	void *opaque;
};

#define STOP_SIGNALS_INIT                                                      \
	{                                                                      \
		.fd = -1                                                       \
	}

/*
 * Block the 0-terminated sigs (e.g. SIGTERM, SIGINT) and read them from a
 * signalfd (non-blocking, close-on-exec) watched on loop: fn(opaque,
 * signo) for each one received.  SIGPIPE is ignored.  ss must start as
 * STOP_SIGNALS_INIT; stop_signals_stop() undoes it, after a failure too.
 * Returns 0 or -errno with err set.
 */
int stop_signals_start(struct stop_signals *ss, struct bks_loop *loop,
		       const int *sigs,
		       void (*fn)(void *opaque, unsigned int signo),
		       void *opaque, struct bks_error *err);

/* Stop watching and close the signalfd (nothing if never started). */
void stop_signals_stop(struct stop_signals *ss);

#endif /* BLKSTACK_READY_FD_H */
