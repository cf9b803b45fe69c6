/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The worker's side of the channel to its supervisor
 * (docs/control-protocol.txt, "Supervision"): with --supervisor-fd FD
 * (one end of a SOCK_SEQPACKET socketpair), the worker sends one ASCII
 * message per packet, at most WORKER_SUPER_MSG_MAX bytes, no newline:
 *
 *   beat state=STATE inflight=N oldest_ms=M
 *       every second from a loop timer, and at once on every state change
 *       (STATE: running, pausing, paused, stopping; N: requests in flight
 *       in the chain; M: the age of the oldest one, 0 if none)
 *   stopping
 *       when a graceful shutdown begins: the supervisor will not restart
 *       the worker when it exits.
 *   fuse-fd
 *       with a /dev/fuse descriptor attached (SCM_RIGHTS): the session of
 *       the worker's --fuse-mount, once the kernel said it can resend
 *       requests.  The supervisor keeps it, so that the file system
 *       outlives the worker, and gives it to the next worker it starts
 *       (--fuse-fd), which adopts the session (blkstack/fuse-server.h).
 *
 * The supervisor sends nothing.  Sends never block: a message the socket
 * will not take at once is dropped (the next beat says the same), and a
 * supervisor that is gone is not an error (the worker keeps serving).
 * Without --supervisor-fd none of this exists (w->super is NULL, and
 * every function here accepts NULL).
 */
#ifndef BLKSTACK_WORKER_SUPER_H
#define BLKSTACK_WORKER_SUPER_H

#include "blkstack/error.h"
#include "worker.h"

/* The longest message on the channel. */
#define WORKER_SUPER_MSG_MAX 256
/* How often the worker beats. */
#define WORKER_SUPER_BEAT_NS 1000000000ull

struct worker_super;

/*
 * Take over fd (required: called by blkstack-worker.c once start() has
 * succeeded, with w->loop and w->chain set) and start beating every
 * WORKER_SUPER_BEAT_NS, the first beat at once.  Returns 0 with *out, or
 * -errno with err set (fd is closed either way).
 */
int worker_super_new(struct worker_super **out, struct worker *w, int fd,
		     struct bks_error *err);

/* Beat now (called on every state change).  s may be NULL. */
void worker_super_beat(struct worker_super *s);

/* Say "stopping", then beat (called as shutdown begins).  s may be NULL. */
void worker_super_stopping(struct worker_super *s);

/*
 * Send "fuse-fd" with a duplicate of fd (see above).  s may be NULL.
 * Returns 0, or -errno if the supervisor did not take it (the file
 * system then ends with this worker).
 */
int worker_super_send_fuse_fd(struct worker_super *s, int fd);

/* Stop the timer, close the channel, free.  s may be NULL. */
void worker_super_free(struct worker_super *s);

#endif /* BLKSTACK_WORKER_SUPER_H */
