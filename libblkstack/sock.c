/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Socket settings: see include/blkstack/sock.h. */
#include <errno.h>
#include <sys/socket.h>

#include "blkstack/sock.h"

static int sndbuf_now(int fd)
{
	int val = 0;
	socklen_t len = sizeof(val);

	if (getsockopt(fd, SOL_SOCKET, SO_SNDBUF, &val, &len) < 0)
		return -errno;
	return val > 0 ? val : -EINVAL;
}

int bks_sock_grow_sndbuf(int fd, int bytes)
{
	int now = sndbuf_now(fd);

	if (now < 0 || bytes <= 0 || now >= bytes)
		return now;
	/*
	 * Either may fail (no CAP_NET_ADMIN; a capped size): what is in
	 * force afterwards is the answer.
	 */
	if (setsockopt(fd, SOL_SOCKET, SO_SNDBUFFORCE, &bytes, sizeof(bytes)) <
	    0)
		(void)setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &bytes,
				 sizeof(bytes));
	return sndbuf_now(fd);
}
