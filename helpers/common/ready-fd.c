/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Readiness, inherited descriptors, stop signals (ready-fd.h). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include "ready-fd.h"

int ready_fd_parse(const char *arg, int min, int *fd)
{
	char *end;
	long v;

	errno = 0;
	v = strtol(arg, &end, 10);
	if (errno || *end || end == arg || v < min || v > 65535)
		return -EINVAL;
	*fd = (int)v;
	return 0;
}

void close_inherited(const int *keep, size_t n)
{
	unsigned int from = 3;

	/* Up the descriptors, closing the gaps between the kept ones. */
	for (;;) {
		int next = -1;

		for (size_t i = 0; i < n; i++)
			if (keep[i] >= (int)from &&
			    (next < 0 || keep[i] < next))
				next = keep[i];
		if (next < 0)
			break;
		if ((unsigned int)next > from)
			close_range(from, (unsigned int)next - 1, 0);
		from = (unsigned int)next + 1;
	}
	close_range(from, ~0u, 0);
}

void ready_forward(int fd, const char *text, size_t len)
{
	if (fd < 0)
		return;
	if (write(fd, text, len) < 0) {
		/* The starter went away; nothing to tell. */
	}
	close(fd);
}

void ready_report(int fd, const struct bks_error *err)
{
	char line[BKS_ERROR_MSG_MAX + 64];
	const char *e;
	int n;

	if (fd < 0)
		return;
	if (err) {
		e = strerrorname_np(err->code);
		n = snprintf(line, sizeof(line), "error: %s\nerrno: %s\n",
			     err->msg, e ? e : "EIO");
	} else {
		n = snprintf(line, sizeof(line), "ok\n");
	}
	if (n < 0) {
		close(fd);
		return;
	}
	ready_forward(fd, line,
		      (size_t)n < sizeof(line) ? (size_t)n : sizeof(line) - 1);
}

static void on_signals(struct bks_watch *w, uint32_t events)
{
	struct stop_signals *ss = w->opaque;
	struct signalfd_siginfo si;

	(void)events;
	while (read(ss->fd, &si, sizeof(si)) == sizeof(si))
		ss->fn(ss->opaque, si.ssi_signo);
}

int stop_signals_start(struct stop_signals *ss, struct bks_loop *loop,
		       const int *sigs,
		       void (*fn)(void *opaque, unsigned int signo),
		       void *opaque, struct bks_error *err)
{
	sigset_t set;
	int rc;

	ss->fn = fn;
	ss->opaque = opaque;
	/* A starter that ignores SIGPIPE or not: we never take it. */
	signal(SIGPIPE, SIG_IGN);
	sigemptyset(&set);
	for (const int *s = sigs; *s; s++)
		sigaddset(&set, *s);
	if (sigprocmask(SIG_BLOCK, &set, NULL) < 0)
		return bks_error_set(err, errno, "sigprocmask");
	ss->fd = signalfd(-1, &set, SFD_NONBLOCK | SFD_CLOEXEC);
	if (ss->fd < 0)
		return bks_error_set(err, errno, "signalfd");
	rc = bks_watch_add(loop, &ss->watch, ss->fd, EPOLLIN, on_signals, ss);
	if (rc < 0)
		return bks_error_set(err, -rc, "watch signals");
	return 0;
}

void stop_signals_stop(struct stop_signals *ss)
{
	if (ss->fd < 0)
		return;
	bks_watch_del(&ss->watch);
	close(ss->fd);
	ss->fd = -1;
}
