/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* The worker's side of the supervisor channel (worker-super.h). */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "worker-super.h"

struct worker_super {
	struct worker *w;
	int fd;
	struct bks_timer timer;
};

/* One packet; never blocks, never fails the worker. */
static void send_msg(struct worker_super *s, const char *msg, size_t len)
{
	if (s->fd < 0)
		return;
	if (send(s->fd, msg, len, MSG_DONTWAIT | MSG_NOSIGNAL) < 0 &&
	    errno != EAGAIN && errno != EINTR) {
		/* The supervisor is gone: nobody listens any more. */
		close(s->fd);
		s->fd = -1;
	}
}

void worker_super_beat(struct worker_super *s)
{
	char msg[WORKER_SUPER_MSG_MAX];
	uint64_t oldest, age_ms = 0;
	int n;

	if (!s)
		return;
	oldest = s->w->chain ? bks_chain_oldest_ns(s->w->chain) : 0;
	if (oldest) {
		uint64_t now = bks_now_ns();

		age_ms = now > oldest ? (now - oldest) / 1000000u : 0;
	}
	n = snprintf(
	    msg, sizeof(msg), "beat state=%s inflight=%llu oldest_ms=%llu",
	    worker_state_name(s->w->state),
	    (unsigned long long)(s->w->chain ? bks_chain_in_flight(s->w->chain)
					     : 0),
	    (unsigned long long)age_ms);
	if (n > 0 && (size_t)n < sizeof(msg))
		send_msg(s, msg, (size_t)n);
}

static void on_timer(struct bks_timer *t)
{
	struct worker_super *s = t->opaque;

	worker_super_beat(s);
	if (s->fd >= 0)
		bks_timer_arm(&s->timer, WORKER_SUPER_BEAT_NS);
}

int worker_super_send_fuse_fd(struct worker_super *s, int fd)
{
	static const char msg[] = "fuse-fd";
	union {
		struct cmsghdr h;
		char buf[CMSG_SPACE(sizeof(int))];
	} c = {0};
	struct iovec iov = {.iov_base = (void *)msg, .iov_len = strlen(msg)};
	struct msghdr mh = {.msg_iov = &iov,
			    .msg_iovlen = 1,
			    .msg_control = c.buf,
			    .msg_controllen = sizeof(c.buf)};
	struct cmsghdr *cm = CMSG_FIRSTHDR(&mh);

	if (!s || s->fd < 0)
		return -ENOTCONN;
	cm->cmsg_level = SOL_SOCKET;
	cm->cmsg_type = SCM_RIGHTS;
	cm->cmsg_len = CMSG_LEN(sizeof(int));
	memcpy(CMSG_DATA(cm), &fd, sizeof(int));
	if (sendmsg(s->fd, &mh, MSG_DONTWAIT | MSG_NOSIGNAL) < 0)
		return -errno;
	return 0;
}

void worker_super_stopping(struct worker_super *s)
{
	if (!s)
		return;
	send_msg(s, "stopping", strlen("stopping"));
	worker_super_beat(s);
}

int worker_super_new(struct worker_super **out, struct worker *w, int fd,
		     struct bks_error *err)
{
	struct worker_super *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (!s) {
		close(fd);
		return bks_error_set(err, ENOMEM, "supervisor channel");
	}
	s->w = w;
	s->fd = fd;
	bks_timer_init(w->loop, &s->timer, on_timer, s);
	worker_super_beat(s);
	bks_timer_arm(&s->timer, WORKER_SUPER_BEAT_NS);
	*out = s;
	return 0;
}

void worker_super_free(struct worker_super *s)
{
	if (!s)
		return;
	bks_timer_cancel(&s->timer);
	if (s->fd >= 0)
		close(s->fd);
	free(s);
}
