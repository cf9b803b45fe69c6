/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The NBD client side of the helpers: the handshake (fixed newstyle,
 * NBD_OPT_GO on the default export) done here because the kernel takes the
 * socket in the transmission phase, and the probe of a worker's NBD
 * socket.  Wire constants from blkstack/nbd-proto.h, the export's own.
 * See nbd-client.h.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/un.h>
#include <unistd.h>

#include "blkstack/endian.h"
#include "blkstack/nbd-proto.h"
#include "blkstack/sock.h"
#include "nbd-client.h"

/* The server's greeting: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
#define NBD_GREETING_SIZE 18u
/* Longest option reply we accept (error strings are at most 4096). */
#define NBD_HS_REP_MAX 8192u
/* How long the handshake may take. */
#define NBD_HS_TIMEOUT_S 10

static int read_full(int fd, void *buf, size_t len)
{
	char *p = buf;

	while (len) {
		ssize_t n = read(fd, p, len);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (n == 0)
			return -ECONNRESET;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* MSG_NOSIGNAL: a server that hangs up must not kill us with SIGPIPE. */
static int send_full(int fd, const void *buf, size_t len)
{
	const char *p = buf;

	while (len) {
		ssize_t n = send(fd, p, len, MSG_NOSIGNAL);

		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		p += n;
		len -= (size_t)n;
	}
	return 0;
}

/* Set (or with 0, clear) the socket's send and receive timeouts. */
static int sock_timeouts(int fd, int secs)
{
	struct timeval tv = {.tv_sec = secs};

	if (setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv)) < 0)
		return -errno;
	return 0;
}

int nbd_client_handshake(const char *nbd_sock, int *out_fd,
			 struct nbd_export *ex, struct bks_error *err)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	unsigned char hdr[NBD_OPTION_REPLY_HDR_SIZE],
	    req[4 + NBD_OPTION_HDR_SIZE + 4 + 2 + 2], *p, *rep = NULL;
	bool have_export = false;
	int fd, ret;

	*out_fd = -1;
	memset(ex, 0, sizeof(*ex));
	if (strlen(nbd_sock) >= sizeof(sa.sun_path))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"NBD socket path too long: %s",
					nbd_sock);
	memcpy(sa.sun_path, nbd_sock, strlen(nbd_sock));
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return bks_error_set(err, errno, "socket for %s", nbd_sock);
	/* A wedged worker must not hang the caller. */
	ret = sock_timeouts(fd, NBD_HS_TIMEOUT_S);
	if (ret < 0) {
		bks_error_set(err, -ret, "set timeouts on %s", nbd_sock);
		goto out;
	}
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0) {
		ret = bks_error_set(err, errno, "connect %s", nbd_sock);
		goto out;
	}
	/*
	 * The kernel's NBD client sends its writes on this socket: room
	 * for whole 1 MiB ones (blkstack/sock.h).
	 */
	(void)bks_sock_grow_sndbuf(fd, BKS_SOCK_SNDBUF);

	/* S: NBDMAGIC, IHAVEOPT, 16-bit handshake flags. */
	ret = read_full(fd, hdr, NBD_GREETING_SIZE);
	if (ret < 0) {
		bks_error_set(err, -ret, "NBD handshake on %s: read greeting",
			      nbd_sock);
		goto out;
	}
	if (bks_get_be64(hdr) != NBD_MAGIC ||
	    bks_get_be64(hdr + 8) != NBD_IHAVEOPT ||
	    !(bks_get_be16(hdr + 16) & NBD_FLAG_FIXED_NEWSTYLE)) {
		ret = bks_error_setmsg(err, EPROTO,
				       "NBD handshake on %s: not a fixed "
				       "newstyle NBD server",
				       nbd_sock);
		goto out;
	}

	/*
	 * C: client flags (fixed newstyle, and no zeroes if offered), then
	 * NBD_OPT_GO on the default export "" with one information request,
	 * the block size constraints.
	 */
	p = bks_put_be32(req, NBD_FLAG_C_FIXED_NEWSTYLE |
				  (bks_get_be16(hdr + 16) & NBD_FLAG_NO_ZEROES
				       ? NBD_FLAG_C_NO_ZEROES
				       : 0));
	p = bks_put_be64(p, NBD_IHAVEOPT);
	p = bks_put_be32(p, NBD_OPT_GO);
	p = bks_put_be32(p, 4 + 2 + 2); /* name length, requests, one request */
	p = bks_put_be32(p, 0);		/* the name: empty */
	p = bks_put_be16(p, 1);
	p = bks_put_be16(p, NBD_INFO_BLOCK_SIZE);
	ret = send_full(fd, req, (size_t)(p - req));
	if (ret < 0) {
		bks_error_set(err, -ret, "NBD handshake on %s: send NBD_OPT_GO",
			      nbd_sock);
		goto out;
	}

	rep = malloc(NBD_HS_REP_MAX + 1);
	if (!rep) {
		ret =
		    bks_error_set(err, ENOMEM, "NBD handshake on %s", nbd_sock);
		goto out;
	}
	for (;;) {
		uint32_t type, len;

		/* S: magic, option, reply type, length, data. */
		ret = read_full(fd, hdr, NBD_OPTION_REPLY_HDR_SIZE);
		if (ret < 0) {
			bks_error_set(err, -ret,
				      "NBD handshake on %s: read reply",
				      nbd_sock);
			goto out;
		}
		type = bks_get_be32(hdr + 12);
		len = bks_get_be32(hdr + 16);
		if (bks_get_be64(hdr) != NBD_REP_MAGIC ||
		    bks_get_be32(hdr + 8) != NBD_OPT_GO ||
		    len > NBD_HS_REP_MAX) {
			ret = bks_error_setmsg(err, EPROTO,
					       "NBD handshake on %s: bad "
					       "option reply",
					       nbd_sock);
			goto out;
		}
		ret = read_full(fd, rep, len);
		if (ret < 0) {
			bks_error_set(err, -ret,
				      "NBD handshake on %s: read reply data",
				      nbd_sock);
			goto out;
		}
		if (type & NBD_REP_ERR(0)) { /* the error bit */
			rep[len] = '\0';
			bks_sanitize_line((char *)rep);
			ret = bks_error_setmsg(err, EIO,
					       "NBD handshake on %s: server "
					       "refused NBD_OPT_GO (error "
					       "%#x): %.200s",
					       nbd_sock, type, (char *)rep);
			goto out;
		}
		if (type == NBD_REP_ACK)
			break;
		if (type != NBD_REP_INFO || len < 2)
			continue; /* unknown replies may be skipped */
		if (bks_get_be16(rep) == NBD_INFO_EXPORT && len == 12) {
			ex->size = bks_get_be64(rep + 2);
			ex->flags = bks_get_be16(rep + 10);
			have_export = true;
		} else if (bks_get_be16(rep) == NBD_INFO_BLOCK_SIZE &&
			   len == 14) {
			ex->min_block = bks_get_be32(rep + 2);
		}
	}
	if (!have_export) {
		ret = bks_error_setmsg(err, EPROTO,
				       "NBD handshake on %s: no export "
				       "information before the ACK",
				       nbd_sock);
		goto out;
	}
	/* The kernel would read with the socket's timeouts: clear them. */
	ret = sock_timeouts(fd, 0);
	if (ret < 0) {
		bks_error_set(err, -ret, "clear timeouts on %s", nbd_sock);
		goto out;
	}
	*out_fd = fd;
	fd = -1;
	ret = 0;
out:
	free(rep);
	if (fd >= 0)
		close(fd);
	return ret;
}

int nbd_sock_probe(const char *sock)
{
	struct sockaddr_un sa = {.sun_family = AF_UNIX};
	int fd, rc = 0;

	if (strlen(sock) >= sizeof(sa.sun_path))
		return -ENAMETOOLONG;
	strcpy(sa.sun_path, sock);
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) < 0)
		rc = -errno;
	close(fd);
	return rc;
}
