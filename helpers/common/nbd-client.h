/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD client side of the helpers (nbd-client.c): the handshake that
 * leaves a socket ready for the kernel NBD client, and the probe of a
 * worker's NBD socket.  Used by nbd-kernel.c (attach and reconnect), the
 * hotplug helper (detach's liveness test) and tests/dev/hp-dev-tool.
 */
#ifndef BLKSTACK_NBD_CLIENT_H
#define BLKSTACK_NBD_CLIENT_H

#include "blkstack/error.h"

/* What the NBD handshake learnt about the export. */
struct nbd_export {
	unsigned long long size; /* bytes */
	unsigned short flags;	 /* transmission flags (NBD_FLAG_*) */
	unsigned int min_block;	 /* NBD_INFO_BLOCK_SIZE minimum, 0 if none */
};

/*
 * Connect to the NBD server on the Unix socket nbd_sock and complete the
 * handshake (fixed newstyle, NBD_OPT_GO on the default export), leaving
 * the socket (*fd, close-on-exec, no timeouts) in the transmission phase.
 * The handshake itself is bounded (10 s of silence from the server is a
 * failure).  Returns 0, or -errno with err set (the server's refusal text,
 * sanitised, is quoted).  Required for the kernel NBD path; any caller.
 */
int nbd_client_handshake(const char *nbd_sock, int *fd, struct nbd_export *ex,
			 struct bks_error *err);

/*
 * Does the Unix socket sock accept a connection (which is then closed)?
 * 0, or -errno from connect: -ECONNREFUSED or -ENOENT mean nobody serves
 * it; -ENAMETOOLONG if sock cannot be a socket address.
 */
int nbd_sock_probe(const char *sock);

#endif /* BLKSTACK_NBD_CLIENT_H */
