/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Rebinding the worker's devices (sup-rebind.h). */
#include <errno.h>
#include <stdio.h>

#include "sup-rebind.h"

/*
 * TODO(knbd): nbd_kernel_reconnect_all() and nbd_kernel_fail_all() of
 * helpers/common/nbd-kernel.h are written on branch knbd; until it is
 * merged, say that nothing was done (never pretend it was).
 */
int sup_rebind_restarted(const char *nbd_sock, char *result, size_t size)
{
	(void)nbd_sock;
	snprintf(result, size,
		 "not done: kernel NBD reconnection is not in this build");
	return -ENOSYS;
}

int sup_rebind_gave_up(const char *nbd_sock, char *result, size_t size)
{
	(void)nbd_sock;
	snprintf(result, size,
		 "not done: kernel NBD give-up is not in this build");
	return -ENOSYS;
}
