/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Waiting for processes and reaping children (child.h). */
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/pidfd.h>
#include <sys/wait.h>
#include <unistd.h>

#include "child.h"
#include "deadline.h"

int pidfd_wait(int pidfd, int timeout_ms)
{
	uint64_t deadline = deadline_in(timeout_ms);

	for (;;) {
		struct pollfd p = {.fd = pidfd, .events = POLLIN};
		int n = poll(&p, 1, ms_left(deadline));

		if (n > 0)
			return 0;
		if (n == 0)
			return -ETIMEDOUT;
		if (errno != EINTR)
			return -errno;
	}
}

/*
 * Without pidfds (old kernels, valgrind): look every 10 ms until the
 * deadline.  Returns 1 once reaped (*st filled), 0 at the deadline, or
 * -errno.
 */
static int reap_by_looking(pid_t pid, int timeout_ms, int *st)
{
	uint64_t deadline = deadline_in(timeout_ms);

	for (;;) {
		int rc = child_try_reap(pid, st), left;

		if (rc != 0)
			return rc;
		left = ms_left(deadline);
		if (left == 0)
			return 0;
		poll(NULL, 0, left < 10 ? left : 10);
	}
}

int child_reap(pid_t pid, int timeout_ms, int *status)
{
	int pidfd = pidfd_open(pid, 0), st = 0, rc;

	if (pidfd >= 0) {
		if (pidfd_wait(pidfd, timeout_ms) == -ETIMEDOUT)
			kill(pid, SIGKILL);
		close(pidfd);
	} else {
		rc = reap_by_looking(pid, timeout_ms, &st);
		if (rc < 0)
			return rc;
		if (rc == 1)
			goto out;
		kill(pid, SIGKILL);
	}
	rc = child_wait(pid, &st);
	if (rc < 0)
		return rc;
out:
	if (status)
		*status = st;
	return 0;
}

int child_wait(pid_t pid, int *status)
{
	while (waitpid(pid, status, 0) < 0) {
		if (errno != EINTR)
			return -errno;
	}
	return 0;
}

int child_try_reap(pid_t pid, int *status)
{
	pid_t r;

	while ((r = waitpid(pid, status, WNOHANG)) < 0 && errno == EINTR)
		;
	if (r < 0)
		return -errno;
	return r == pid;
}

void child_describe(int status, char *buf, size_t size)
{
	if (WIFEXITED(status))
		snprintf(buf, size, "exited with status %d",
			 WEXITSTATUS(status));
	else if (WIFSIGNALED(status))
		snprintf(buf, size, "killed by signal %d (%s)",
			 WTERMSIG(status), strsignal(WTERMSIG(status)));
	else
		snprintf(buf, size, "ended with wait status %#x", status);
}
