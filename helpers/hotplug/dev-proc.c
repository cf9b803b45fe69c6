/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Waiting for hp-dev's child processes: see dev-proc.h. */
#include <errno.h>
#include <poll.h>
#include <sys/wait.h>
#include <time.h>

#include "dev-proc.h"

int64_t hp_dev_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int hp_dev_pidfd_wait(int pidfd, int ms)
{
	struct pollfd pfd = {.fd = pidfd, .events = POLLIN};
	int64_t deadline = hp_dev_now_ms() + ms;
	int n;

	for (;;) {
		int64_t left = deadline - hp_dev_now_ms();

		n = poll(&pfd, 1, left > 0 ? (int)left : 0);
		if (n < 0 && errno == EINTR)
			continue;
		return n > 0;
	}
}

void hp_dev_reap(pid_t pid)
{
	while (waitpid(pid, NULL, WNOHANG) < 0 && errno == EINTR)
		;
}
