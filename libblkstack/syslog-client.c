/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The non-blocking syslog client: see include/blkstack/syslog-client.h.
 */
#include <errno.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>

#include "blkstack/syslog-client.h"

#define IDENT_MAX      64
#define LINE_MAX_BYTES 1024

struct bks_syslog {
	int fd; /* -1: not connected */
	int facility;
	struct sockaddr_un addr;
	char ident[IDENT_MAX];
	uint64_t dropped;
	char buf[LINE_MAX_BYTES + 128]; /* header + line */
};

/* Connect a non-blocking datagram socket to the daemon, if it is there. */
static void try_connect(struct bks_syslog *s)
{
	s->fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (s->fd < 0)
		return;
	if (connect(s->fd, (const struct sockaddr *)&s->addr, sizeof(s->addr)) <
	    0) {
		close(s->fd);
		s->fd = -1;
	}
}

int bks_syslog_open(struct bks_syslog **out, const char *ident, int facility,
		    const char *path, struct bks_error *err)
{
	struct bks_syslog *s;

	*out = NULL;
	if (!path)
		path = BKS_SYSLOG_PATH;
	if (strlen(path) >= sizeof(s->addr.sun_path))
		return bks_error_setmsg(err, ENAMETOOLONG,
					"syslog socket path %s is too long",
					path);
	s = calloc(1, sizeof(*s));
	if (!s)
		return bks_error_set(err, ENOMEM, "syslog client");
	s->facility = facility;
	s->addr.sun_family = AF_UNIX;
	strcpy(s->addr.sun_path, path);
	snprintf(s->ident, sizeof(s->ident), "%s", ident);
	/* localtime_r() reads the zone once, here, not on the first line. */
	tzset();
	try_connect(s);
	*out = s;
	return 0;
}

void bks_syslog_send(struct bks_syslog *s, int prio, const char *msg)
{
	struct timespec now;
	struct tm tm;
	int hdr, len;

	clock_gettime(CLOCK_REALTIME, &now);
	localtime_r(&now.tv_sec, &tm);
	hdr = snprintf(s->buf, sizeof(s->buf), "<%d>",
		       s->facility | LOG_PRI(prio));
	hdr += (int)strftime(s->buf + hdr, sizeof(s->buf) - (size_t)hdr,
			     "%b %e %T ", &tm);
	len = snprintf(s->buf + hdr, sizeof(s->buf) - (size_t)hdr,
		       "%s[%ld]: %.*s", s->ident, (long)getpid(),
		       LINE_MAX_BYTES, msg);
	if (len < 0) {
		s->dropped++;
		return;
	}
	len += hdr;
	if ((size_t)len >= sizeof(s->buf))
		len = (int)sizeof(s->buf) - 1;
	/* Twice at most: once more on a fresh socket if the daemon went
	 * away (restarted) since the last line. */
	for (int attempt = 0; attempt < 2; attempt++) {
		if (s->fd < 0)
			try_connect(s);
		if (s->fd < 0)
			break;
		if (send(s->fd, s->buf, (size_t)len,
			 MSG_DONTWAIT | MSG_NOSIGNAL) == len)
			return;
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR ||
		    errno == ENOBUFS)
			break; /* full: drop, keep the socket */
		close(s->fd);
		s->fd = -1;
	}
	s->dropped++;
}

uint64_t bks_syslog_dropped(const struct bks_syslog *s)
{
	return s->dropped;
}

void bks_syslog_close(struct bks_syslog *s)
{
	if (!s)
		return;
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}
