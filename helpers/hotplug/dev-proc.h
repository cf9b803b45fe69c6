/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Waiting for the processes hp-dev starts (nbdfuse, a bounded flush):
 * internal to the dev-*.c files.
 */
#ifndef BLKSTACK_DEV_PROC_H
#define BLKSTACK_DEV_PROC_H

#include <stdint.h>
#include <sys/types.h>

/* CLOCK_MONOTONIC in milliseconds. */
int64_t hp_dev_now_ms(void);

/* Wait until pidfd is readable (the process exited) or ms pass: 1/0. */
int hp_dev_pidfd_wait(int pidfd, int ms);

/* Reap pid if it is our child (it is not when detach runs elsewhere). */
void hp_dev_reap(pid_t pid);

#endif /* BLKSTACK_DEV_PROC_H */
