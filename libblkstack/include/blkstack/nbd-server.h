/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD export: serves one chain to NBD clients on a listening socket
 * (a Unix socket in the worker), following the NBD protocol document
 * (fixed newstyle handshake, simple and structured replies).
 *
 * This is the export side: it only uses the chain's public API
 * (bks_chain_submit, bks_chain_info, ...), so that other exports (the
 * blkif ring, later) can stand beside it.  Everything runs on the given
 * loop and nothing blocks; every client is untrusted.
 */
#ifndef BLKSTACK_NBD_SERVER_H
#define BLKSTACK_NBD_SERVER_H

#include <stdbool.h>
#include <stdint.h>

#include "blkstack/chain.h"
#include "blkstack/error.h"
#include "blkstack/loop.h"

/* Largest READ/WRITE payload accepted, advertised in NBD_INFO_BLOCK_SIZE. */
#define BKS_NBD_MAX_PAYLOAD (32u << 20)

struct bks_nbd_config {
	const char *name;	 /* the export's name; "" also selects it */
	const char *description; /* for NBD_INFO_DESCRIPTION, may be NULL */
	bool read_only;		 /* advertise READ_ONLY, refuse writes */
	unsigned int max_connections; /* 0: 16 */
	unsigned int max_in_flight;   /* per connection; 0: 64 */
};

struct bks_nbd_stats {
	uint64_t connections;	    /* open now */
	uint64_t connections_total; /* accepted since start */
	uint64_t refused;	    /* over max_connections */
	uint64_t dropped;  /* clients disconnected for protocol errors */
	uint64_t requests; /* transmission requests received */
	uint64_t errors;   /* replies with an error */
	uint64_t bytes_read, bytes_written;
	uint64_t in_flight; /* submitted to the chain, not completed */
	uint64_t held;	    /* received while held, total */
	uint64_t holding;   /* held now, not yet submitted */
};

struct bks_nbd_server;

/*
 * Serve chain on listen_fd (a listening stream socket, non-blocking; the
 * server does not close it).  Returns 0 or -errno with err set.
 */
int bks_nbd_server_new(struct bks_nbd_server **out, struct bks_loop *loop,
		       struct bks_chain *chain, int listen_fd,
		       const struct bks_nbd_config *cfg, struct bks_error *err);

/*
 * Hold: keep reading requests from clients but submit none of them (they
 * wait, counted in `held`), and call quiesced(arg) once no request of this
 * server is in flight in the chain -- at once if none is.  Resume submits
 * the held requests in arrival order.  Holding twice replaces the
 * callback.
 */
void bks_nbd_server_hold(struct bks_nbd_server *srv,
			 void (*quiesced)(void *arg), void *arg);
void bks_nbd_server_resume(struct bks_nbd_server *srv);

/*
 * Shut down gracefully: stop accepting and reading, let in-flight
 * requests complete and their replies go out (best effort, bounded by the
 * clients), close every connection, then call done(arg).  Held requests
 * are answered with ESHUTDOWN.
 */
void bks_nbd_server_shutdown(struct bks_nbd_server *srv,
			     void (*done)(void *arg), void *arg);

/* Free the server; it must have no connection left (after shutdown). */
void bks_nbd_server_free(struct bks_nbd_server *srv);

void bks_nbd_server_get_stats(const struct bks_nbd_server *srv,
			      struct bks_nbd_stats *out);

#endif /* BLKSTACK_NBD_SERVER_H */
