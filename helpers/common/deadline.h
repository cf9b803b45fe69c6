/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Bounded waits: a deadline on CLOCK_MONOTONIC, and what is left of it as
 * a poll() timeout.
 */
#ifndef BLKSTACK_DEADLINE_H
#define BLKSTACK_DEADLINE_H

#include <stdint.h>
#include <time.h>

/* Now plus ms, in nanoseconds of CLOCK_MONOTONIC. */
static inline uint64_t deadline_in(int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec +
	       (uint64_t)(ms > 0 ? ms : 0) * 1000000u;
}

/* Milliseconds left until deadline (rounded up), at least 0. */
static inline int ms_left(uint64_t deadline)
{
	struct timespec ts;
	uint64_t now;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	now = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
	if (now >= deadline)
		return 0;
	return (int)((deadline - now + 999999) / 1000000);
}

#endif /* BLKSTACK_DEADLINE_H */
