/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Socket settings shared by blkstack's NBD peers (the worker's NBD
 * server, blkstack-fuse's NBD client).
 *
 * Why the send buffer: on a Unix stream socket the sender's SO_SNDBUF
 * bounds the bytes queued at the receiver.  Linux's default (net.core.
 * wmem_default, 208 KiB on Debian) is a fifth of one 1 MiB read reply,
 * so each such reply took about a dozen sendmsg() calls, each after an
 * EPOLLOUT wake-up (bench/README.md, "Means tried").  A buffer that holds
 * several replies sends each in one call.
 */
#ifndef BLKSTACK_SOCK_H
#define BLKSTACK_SOCK_H

/*
 * The send buffer blkstack asks for on its NBD sockets: four 1 MiB
 * payloads and their headers.  A limit, not an allocation: an idle
 * connection costs nothing more.
 */
#define BKS_SOCK_SNDBUF (4 * 1024 * 1024)

/*
 * Raise fd's send buffer to at least bytes (the kernel doubles what it
 * is asked for, for its own bookkeeping).  SO_SNDBUFFORCE first, which
 * passes net.core.wmem_max and needs CAP_NET_ADMIN (the worker runs as
 * root in dom0); without that capability, SO_SNDBUF, which the kernel
 * caps at wmem_max.  Never lowers a buffer that is already larger.
 * Optional for callers: a socket whose buffer cannot grow still works,
 * only with more calls per large reply.  Called by the NBD server on each
 * accepted connection and by blkstack-fuse on each connect.  Returns the
 * send buffer now in force, in bytes (> 0), or -errno if fd is not a
 * socket or the size cannot be read back.
 */
int bks_sock_grow_sndbuf(int fd, int bytes);

#endif
