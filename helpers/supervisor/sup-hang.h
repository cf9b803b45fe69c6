/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The supervisor's hang watch (docs/control-protocol.txt, "Supervision"):
 * the worker's messages on the channel (worker-super.h) parsed, and the
 * rule that says it is hung: no message for hang-timeout seconds, or a
 * beat that says the oldest request in flight is older than that.  Pure:
 * the clock is passed in.
 */
#ifndef BLKSTACK_SUP_HANG_H
#define BLKSTACK_SUP_HANG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* The longest message on the channel (worker-super.h). */
#define SUP_MSG_MAX 256

/* What one message said. */
enum sup_msg_kind {
	SUP_MSG_BEAT,
	SUP_MSG_STOPPING,
	SUP_MSG_FUSE_FD, /* a /dev/fuse descriptor came with it */
};

struct sup_beat {
	char state[16]; /* running, pausing, paused, stopping */
	uint64_t inflight;
	uint64_t oldest_ms;
};

/*
 * Parse one packet of len bytes (no NUL needed).  A beat fills *b.
 * Returns SUP_MSG_BEAT, SUP_MSG_STOPPING, SUP_MSG_FUSE_FD ("fuse-fd";
 * the descriptor is the caller's business), or -EINVAL for anything else
 * (the caller ignores it).
 */
int sup_msg_parse(const char *msg, size_t len, struct sup_beat *b);

/*
 * Is the worker hung?  last_msg_ns: when its last message came; b: its
 * last beat (NULL: none yet).  timeout_s 0: never.  Returns true with
 * the reason in why ("no beat for 30 s", "a request in flight for
 * 31000 ms").
 */
bool sup_hung(uint64_t now_ns, uint64_t last_msg_ns, const struct sup_beat *b,
	      unsigned int timeout_s, char *why, size_t size);

#endif /* BLKSTACK_SUP_HANG_H */
