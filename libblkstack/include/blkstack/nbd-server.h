/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD export: serves one chain to NBD clients on a listening socket
 * (a Unix socket in the worker), following the NBD protocol document
 * (fixed newstyle handshake, simple and structured replies).  The code is
 * in libblkstack/export/nbd/, split by protocol phase (its internal.h).
 *
 * An export behind the one interface of export.h: programs start, hold,
 * resume, shut down and free it with the bks_export_*() functions.  It
 * only uses the chain's public API (bks_chain_submit, bks_chain_info,
 * ...) and translates the wire format to requests and back, so that other
 * exports (the blkif ring, later) can stand beside it.  A hold is the
 * chain's drain: the export goes on reading requests and the chain parks
 * them.  Everything runs on the given loop and nothing blocks; every
 * client is untrusted.
 */
#ifndef BLKSTACK_NBD_SERVER_H
#define BLKSTACK_NBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"
#include "blkstack/export.h"
#include "blkstack/loop.h"

/* Largest READ/WRITE payload accepted, advertised in NBD_INFO_BLOCK_SIZE. */
#define BKS_NBD_MAX_PAYLOAD (32u << 20)

/*
 * Limits (see "Connection limits" in docs/control-protocol.txt).
 *
 * Connections.  At most max_connections are open.  There is no idle
 * timeout once a client is in transmission: the dom0 device's own
 * connection (kernel NBD, nbdfuse) idles legitimately for as long as the
 * guest does no I/O, and must never be dropped for it.  Instead:
 *
 *   - A client that has not finished its handshake within
 *     BKS_NBD_HANDSHAKE_TIMEOUT_MS is dropped.
 *   - A client that is stuck in the middle of something -- replies
 *     waiting that it does not read, or half a request sent -- and makes
 *     no progress for BKS_NBD_STALL_TIMEOUT_MS is dropped.  A kernel or
 *     nbdfuse client always reads its replies and sends whole requests.
 *   - One process (SO_PEERCRED) holds at most 8 connections: its next
 *     one takes the place of its own youngest idle connection.  So one
 *     client cannot fill the table; the rest is room for the others.
 *   - When the table is full, a newcomer is not refused: the server
 *     evicts an idle connection (nothing in flight, nothing queued,
 *     nothing half received) or one that does not read its replies (none
 *     taken for 2 s) of another process to make room, and refuses only
 *     when there is none.  The victim is, in this order: one that does
 *     not read its replies; a client still negotiating (the oldest
 *     first: a real client negotiates in milliseconds); a client that
 *     has never sent a request; any other.  Among the last two, the most
 *     recently accepted goes first -- seniority: a connection that was
 *     there before a flood of idlers began outlives every one of them,
 *     so the device connection that has idled for minutes stays while
 *     idlers come and go.  A new device connection (after a re-attach)
 *     is accepted, its multi-conn set too (a newcomer never evicts its
 *     own process's connections to get in), and once it has carried a
 *     request (its first I/O) only younger or never-used connections go
 *     before it.  The one gap: between its connect and its first request
 *     a new device connection is the youngest never-used one, and an idler
 *     of another process knocking at a full table in that moment takes
 *     its place.  Nothing on the wire tells the two apart then.
 *
 * Memory.  A connection stops reading requests (back-pressure) while
 * more than BKS_NBD_CONN_OUT_HIGH bytes of replies wait for it, and its
 * data buffers are bounded by BKS_NBD_CONN_BUF_BUDGET -- except that one
 * request of up to BKS_NBD_MAX_PAYLOAD may go through when the connection
 * has nothing else in progress.  All connections together hold at most
 * BKS_NBD_SRV_BUF_BUDGET of data buffers; a connection with nothing in
 * progress may always take BKS_NBD_CONN_BUF_FLOOR, so that small clients
 * (the device) are never starved by big ones.  Requests over a budget
 * wait (the connection stops reading) until buffers come back; those a
 * client that does not read holds come back when it is evicted or
 * dropped by the stall check.
 */
#define BKS_NBD_HANDSHAKE_TIMEOUT_MS 30000u
#define BKS_NBD_STALL_TIMEOUT_MS     30000u
#define BKS_NBD_CONN_OUT_HIGH	     (4u << 20)
#define BKS_NBD_CONN_BUF_BUDGET	     (8u << 20)
#define BKS_NBD_CONN_BUF_FLOOR	     (2u << 20)
#define BKS_NBD_SRV_BUF_BUDGET	     (64u << 20)

struct bks_nbd_config {
	const char *name;	 /* the export's name; "" also selects it */
	const char *description; /* for NBD_INFO_DESCRIPTION, may be NULL */
	bool read_only;		 /* advertise READ_ONLY, refuse writes */
	unsigned int max_connections; /* 0: 16 */
	unsigned int max_in_flight;   /* per connection; 0: 64 */
	/* 0: the defaults above.  Shorter ones are for tests. */
	unsigned int handshake_timeout_ms, stall_timeout_ms;
};

/*
 * Make the NBD export of chain on listen_fd (a listening stream socket,
 * made non-blocking; the export does not close it): the handle of
 * include/blkstack/export.h, which serves once bks_export_start() is
 * called.  Its counters are struct bks_export_stats.  Returns 0 or -errno
 * with err set.
 */
int bks_nbd_export_new(struct bks_export **out, struct bks_loop *loop,
		       struct bks_chain *chain, int listen_fd,
		       const struct bks_nbd_config *cfg, struct bks_error *err);

#endif /* BLKSTACK_NBD_SERVER_H */
