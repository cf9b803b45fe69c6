/* SPDX-License-Identifier: LGPL-2.1-or-later */
/*
 * The kernel NBD mechanism: a /dev/nbdN on a worker's NBD socket, made
 * and undone with generic netlink (NBD_CMD_CONNECT, NBD_CMD_DISCONNECT),
 * recognised by its sysfs backend identifier.  Internal to the dev-*.c
 * files; hp-dev.c chooses between it and the loop mechanism.
 */
#ifndef BLKSTACK_DEV_NBD_KERNEL_H
#define BLKSTACK_DEV_NBD_KERNEL_H

#include <stdbool.h>

#include "blkstack/error.h"
#include "hp-dev.h"

/*
 * Handshake on nbd_sock, then hand the socket to the kernel: fills
 * dev->path, major and minor.  On failure, disconnects what the kernel
 * made and leaves dev->path "".
 */
int hp_nbd_attach(const char *nbd_sock, bool ro, struct hp_dev *dev,
		  struct bks_error *err);

/*
 * Flush and disconnect dev->path if it is connected and ours; see the
 * comment at its definition for the rules.  Idempotent.
 */
int hp_nbd_detach(const struct hp_dev *dev, struct bks_error *err);

/*
 * Is dev->path (already checked to be the record's node) connected, with
 * blkstack's backend identifier for nbd_sock?  Never fails: no means no.
 */
bool hp_nbd_bound(const struct hp_dev *dev, const char *nbd_sock);

#endif /* BLKSTACK_DEV_NBD_KERNEL_H */
