/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * Rebinding the worker's devices (docs/control-protocol.txt,
 * "Supervision"): after a successful restart, every kernel NBD device
 * whose backend is this worker's nbd.sock is reconnected to the new
 * worker (NBD_CMD_RECONFIGURE); on give-up they are failed, so that the
 * guest's queued I/O ends instead of waiting for reconnect-timeout.
 * The kernel side is helpers/common/nbd-kernel.h.
 */
#ifndef BLKSTACK_SUP_REBIND_H
#define BLKSTACK_SUP_REBIND_H

#include <stddef.h>

/*
 * After a restart: reconnect the devices of nbd_sock.  result gets a
 * line for the state file and syslog ("reconnected 1 device", or the
 * error).  Returns the count, or -errno.
 */
int sup_rebind_restarted(const char *nbd_sock, char *result, size_t size);

/* On give-up: fail the devices of nbd_sock.  As above; returns 0 or -errno. */
int sup_rebind_gave_up(const char *nbd_sock, char *result, size_t size);

#endif /* BLKSTACK_SUP_REBIND_H */
