/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * blkstack-fuse's log: one line per event (disconnect, reconnect, outage
 * length, failures) to syslog through libblkstack's non-blocking client
 * (blkstack/syslog-client.h), or to stderr with --foreground.  Used by
 * every file of helpers/fuse/.
 */
#ifndef BLKSTACK_FUSE_LOG_H
#define BLKSTACK_FUSE_LOG_H

#include <stdbool.h>

struct bks_syslog;

struct bf_log {
	struct bks_syslog *syslog; /* NULL: stderr */
	const char *tag;	   /* the mountpoint, in every line */
};

/*
 * Log one line at prio (LOG_ERR, LOG_WARNING, LOG_INFO).  Required:
 * log; never blocks (a line syslog does not take at once is dropped).
 */
void bf_log(struct bf_log *log, int prio, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#endif /* BLKSTACK_FUSE_LOG_H */
