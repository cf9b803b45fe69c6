/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * A syslog client that never blocks, for a program whose loop must not
 * (the worker).  syslog(3) writes to /dev/log with a blocking send(): a
 * slow or stuck syslog daemon (journald under load) stalls the caller.
 * This one sends each line as one datagram with MSG_DONTWAIT, in the
 * format syslog(3) uses ("<PRI>Mmm dd hh:mm:ss IDENT[PID]: MESSAGE"), and
 * drops what the socket will not take at once, counting the drops for
 * stats.  Where no daemon listens (no /dev/log, or it was restarted) it
 * connects again at the next line; lines sent meanwhile count as dropped.
 * A stream socket at /dev/log (rare: journald, rsyslog and syslog-ng all
 * listen on datagrams) is not spoken to: its lines count as dropped.
 *
 * Not thread-safe: one thread (the loop's) uses a client.
 */
#ifndef BLKSTACK_SYSLOG_CLIENT_H
#define BLKSTACK_SYSLOG_CLIENT_H

#include <stdint.h>

#include "blkstack/error.h"

/* Where syslog(3) sends. */
#define BKS_SYSLOG_PATH "/dev/log"

struct bks_syslog;

/*
 * A client for ident (copied, at most 63 bytes used) logging to facility
 * (LOG_DAEMON, ...) through the datagram socket at path (NULL:
 * BKS_SYSLOG_PATH).  Nothing listening there is not an error.  Returns 0,
 * or -ENOMEM with err set.
 */
int bks_syslog_open(struct bks_syslog **out, const char *ident, int facility,
		    const char *path, struct bks_error *err);

/*
 * Send msg (one line; longer than 1 KiB is cut) at priority prio
 * (LOG_ERR, LOG_INFO, ...).  Never blocks.  A line the daemon does not
 * take at once is dropped and counted.
 */
void bks_syslog_send(struct bks_syslog *s, int prio, const char *msg);

/* Lines dropped so far. */
uint64_t bks_syslog_dropped(const struct bks_syslog *s);

/* Close and free (NULL: nothing). */
void bks_syslog_close(struct bks_syslog *s);

#endif /* BLKSTACK_SYSLOG_CLIENT_H */
