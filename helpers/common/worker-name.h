/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Worker names, shared by the worker, blkstack-ctl and the hotplug helper:
 * a name is one path component under the run directory (RUNDIR/NAME).
 */
#ifndef BLKSTACK_WORKER_NAME_H
#define BLKSTACK_WORKER_NAME_H

#include <stdbool.h>

/* Worker names: [A-Za-z0-9_.-]{1,64}, not "." or "..". */
#define WORKER_NAME_MAX 64

/* Is s a worker name: safe as one path component? */
bool worker_name_valid(const char *s);

#endif /* BLKSTACK_WORKER_NAME_H */
