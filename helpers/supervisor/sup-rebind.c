/* SPDX-License-Identifier: LGPL-2.1-or-later */
/* Rebinding the worker's devices (sup-rebind.h). */
#include <errno.h>
#include <stdio.h>

#include "nbd-kernel.h"
#include "sup-rebind.h"

int sup_rebind_restarted(const char *nbd_sock, char *result, size_t size)
{
	struct bks_error err = {0};
	unsigned int n = 0;
	int rc = nbd_kernel_reconnect_all(nbd_sock, &n, &err);

	if (rc < 0) {
		snprintf(result, size,
			 "kernel NBD reconnect failed after %u device%s: %s", n,
			 n == 1 ? "" : "s", err.msg);
		return rc;
	}
	snprintf(result, size, "kernel NBD: reconnected %u device%s", n,
		 n == 1 ? "" : "s");
	return (int)n;
}

int sup_rebind_gave_up(const char *nbd_sock, char *result, size_t size)
{
	struct bks_error err = {0};
	int rc = nbd_kernel_fail_all(nbd_sock, &err);

	if (rc < 0) {
		snprintf(result, size, "kernel NBD: failing the devices: %s",
			 err.msg);
		return rc;
	}
	snprintf(result, size, "kernel NBD: devices failed (if any)");
	return 0;
}
